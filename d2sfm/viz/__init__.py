"""Pictures of models and matches: the model picture every reconstruction writes (`model_picture`).
`python -m d2sfm.viz` and `python -m d2sfm.view` are the command lines.
"""
