"""``priorcase demo``: index MIAS with the bundled encoder (once), show searches, serve the UI."""

from __future__ import annotations

from pathlib import Path

from priorcase.datasets.mias import download_mias, find_mias
from priorcase.index.vocabulary import MIAS_VOCABULARY, record_vocabulary

DEMO_ENCODER = "bundled"


def run_demo(
    db: str | Path,
    serve: bool = True,
    host: str = "127.0.0.1",
    port: int = 7860,
    device: str | None = None,
    auth: str | None = None,
    insecure_no_auth: bool = False,
) -> int:
    import priorcase
    from priorcase.retrieval.hits_table import format_hits

    folder = find_mias()
    if folder is None:
        folder = download_mias(Path(db).parent / "mias")
    print(f"MIAS data: {folder.root}")
    pc = priorcase.open(db, encoder=DEMO_ENCODER, device=device)
    report = pc.ingest(
        folder.images,
        labels=folder.labels,
        findings=folder.findings,
        normal_rois=1,
        modality="MG",  # breast crop, flip and lesion-sized tiles
    )
    record_vocabulary(pc.store.db_dir, MIAS_VOCABULARY)  # plain words for MIAS codes
    print(report.summary())
    example = sorted(folder.images.glob("*"))[0]
    print(f"\nnearest cases to {example.name} (other patients only):")
    print(format_hits(pc.search(image=example, k=5, exclude_same_patient=True, kind="image")))
    for text in ("dense glandular breast", "spiculated mass"):
        print(f"\ntext query {text!r}:")
        print(format_hits(pc.search(text=text, k=5)))
    if serve:
        from priorcase.ui.app import serve as serve_ui

        serve_ui(
            db, host=host, port=port, device=device, auth=auth, insecure_no_auth=insecure_no_auth
        )
    return 0
