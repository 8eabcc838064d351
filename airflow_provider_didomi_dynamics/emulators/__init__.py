"""Local, faithful emulators of the Dataverse Web API (with its Entra ID token endpoint) and of the Didomi API.

They speak real HTTPS on loopback so tests, the demo, benchmarks and users' own DAGs run offline. What they need
beyond the provider comes with the optional extra ``[emulators]``; importing them without it raises
:class:`EmulatorsNotInstalledError`, defined here because the emulators import nothing from the provider.
"""

from __future__ import annotations

from importlib.util import find_spec

EXTRA = "emulators"
REQUIRES = ("starlette", "uvicorn", "cryptography")  # what the emulators import that the provider does not need


class EmulatorsNotInstalledError(ImportError):
    """The emulators were imported without the optional extra; ``extra`` names it, ``name`` the first module missing."""

    def __init__(self, missing: list[str]) -> None:
        super().__init__(
            f"the emulators need the optional extra: pip install 'airflow-provider-didomi-dynamics[{EXTRA}]' "
            f"(missing: {', '.join(missing)})",
            name=missing[0],
        )
        self.extra = EXTRA
        self.missing = missing


_MISSING = [module for module in REQUIRES if find_spec(module) is None]
if _MISSING:
    raise EmulatorsNotInstalledError(_MISSING)
