"""Local features: the D2-Net network (`network`), its checkpoints and the official weights (`checkpoint`,
`weights`), hard detection with sub-pixel refinement (`detect`), the single- and multi-scale pyramid (`pyramid`),
the batched extractor that runs them on a CPU or GPU (`extractor`, `gpu_batching`), and pycolmap's SIFT behind the
same interface (`sift`). Everything here turns an image into keypoints and descriptors; writing them is `io`'s.
"""
