"""Export of trained students to TFLite / LiteRT (builds on `tf_srkd`; never the reverse).

  tflite.py       the command line (`python -m export.tflite`) and the public names
  api.py          export_model / export_all / export_run / export_qat: the steps in order
  source.py       the model to export and its run (file, stage directory, MLflow URI)
  calibration.py  the int8 calibration set
  convert.py      Keras -> .tflite (raw uint8 pixels in, probabilities out)
  verify.py       LiteRT verification against the Keras model
  sidecar.py      writing the .tflite, labels.txt and the JSON sidecar
  mlflow_log.py   downloading a tracked model, logging an export into a run
  qat.py          quantization-aware training (its own process: tfmot)
  errors.py       ExportError
"""
