"""eosfed command-line entry point (``eosfed <command>``); the library lives in the sibling packages."""
