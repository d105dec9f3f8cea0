"""The "onnx" pipeline's stages (ARCHITECTURE.md §1), chained by `worker.inference`:

- `people`: the request's people (boxes, keypoints as COCO-17), else everyone BlazePose
  finds, else the whole image; their 256x192 crops (`Crops`).
- `keypoints`: each person's 2D keypoints for the fit and where they came from.
- `regress`: f_w (and f_u) over the crops or BlazePose's outputs: features and SMPL.
- `fit`: the TTO schedule a job asks for, and one `model.tto.fit` per schedule.
- `files`: mesh.obj / mesh.glb / overlay.png of the final bodies.
- `result`: the typed §5 result (`service.contract.RecoverResult`).

Each stage is functions of typed values; none reads the job store or the raw options JSON.
"""
