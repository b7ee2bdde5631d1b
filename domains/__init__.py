"""verticals.domains: one folder per domain (``data.py``, ``models.py``, ``adapters.py``, ``configs/``).

A domain is one folder with an ``__init__.py``: setup.py finds it, a model named ``<domain>.<model>``
imports it on first use, and its ``models.py`` / ``adapters.py`` register its backbone families, models
and PEFT methods at import, so nothing in the core or in pyproject.toml is edited to add one.

Plugin folders join this package too (a pkgutil-style namespace): any ``verticals/domains/<name>/`` folder
on ``sys.path`` (another distribution, or a directory on ``PYTHONPATH``) is importable as
``verticals.domains.<name>``, and its ``configs/*.yaml`` are listed by ``verticals configs``.
"""

from pkgutil import extend_path

from verticals.core.extras import install_import_check

__path__ = extend_path(__path__, __name__)
# Importing verticals.domains.<name> first checks that the `<name>` extra is installed: a missing dependency
# is one ImportError naming `pip install 'verticals[<name>]'`, not a traceback from deep inside the domain.
install_import_check()
