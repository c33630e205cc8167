"""Structure from motion on pycolmap: the COLMAP database and geometric verification (`database`),
incremental or global mapping with d2sfm's options for D2 keypoints (`mapping`), triangulation at known poses
(`triangulation`), multi-view stereo (`dense`), and the angles between rotations and directions that
evaluation and localization score poses with (`angles`).
"""
