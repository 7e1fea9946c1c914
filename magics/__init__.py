"""The IPython layer of nbkit (installed as ``nbkit.magics``)."""

from __future__ import annotations


def load_ipython_extension(ipython):
    from .magics import NbkitMagics

    ipython.register_magics(NbkitMagics)


def unload_ipython_extension(ipython):  # IPython keeps magics until restart; nothing to undo
    pass
