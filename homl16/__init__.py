"""homl16: the companion package of the course on vision and multimodal transformers.

The core every notebook uses is importable from here; each topic lives in its own
module (``homl16.vit``, ...), and the offline data in ``homl16.data``.
"""

from homl16.notebook import report, setup_notebook, show_source
from homl16.runtime import cache_dir, get_device, set_seed

__version__ = "0.1.0"
__all__ = ["cache_dir", "get_device", "report", "set_seed", "setup_notebook", "show_source"]
