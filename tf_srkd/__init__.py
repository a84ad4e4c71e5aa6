"""tf_srkd: data-efficient knowledge distillation through self-regulation.

Implements Mishra & Sundaram, "Self Regulated Learning Mechanism for Data
Efficient Knowledge Distillation" (arXiv 2102.07125) with Keras 3 on TensorFlow.

Importing the package is cheap: TensorFlow is imported by the modules that need
it, and `tensorflow_model_optimization` is never imported here (it switches the
whole process to legacy Keras).
"""

__version__ = "0.1.0"
