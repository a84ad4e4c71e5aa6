"""Export of trained students to TFLite / LiteRT."""
