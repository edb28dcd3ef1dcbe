"""Export stage: join a selection's decisions back to the source rows, for trainers that read documents."""

from typing import TYPE_CHECKING

from hardfocus.lazy import lazy_exports

_EXPORTS = {
    "ExportConfig": "exporting.config",
    "ExportManifest": "exporting.manifest",
    "ExportResult": "exporting.job",
    "export": "exporting.job",
}
__all__ = ["ExportConfig", "ExportManifest", "ExportResult", "export"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from exporting.config import ExportConfig
    from exporting.job import ExportResult, export
    from exporting.manifest import ExportManifest
