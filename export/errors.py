"""The export package's error type (defined with the package's others in `tf_srkd.errors`)."""

from tf_srkd.errors import ExportError  # pylint: disable=unused-import  (the export package's name for it)
