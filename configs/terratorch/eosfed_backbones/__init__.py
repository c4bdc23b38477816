"""TerraTorch's ``custom_modules_path`` folder: importing it registers eosfed's backbones (fusion.terratorch)."""

import fusion.terratorch  # noqa: F401
