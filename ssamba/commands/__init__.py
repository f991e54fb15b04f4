"""The `ssamba` sub-commands: each module's docstring, ``add_arguments`` and ``main`` (see :mod:`ssamba.cli`).

These modules import torch (and the library modules that use it) only inside ``main``, so that
``ssamba <command> --help`` is fast.
"""
