"""The Manifest: one row per image (or frame), the table every later stage works from.

A manifest is a ``pandas.DataFrame`` with the columns below (extra columns are allowed and are
selectable). It never holds patient names, IDs or birth dates: only ``patient``, a keyed
pseudonym (see :mod:`revise.phi`). ``sample_key`` is stable across re-indexing (derived from
SOPInstanceUID and frame number) and is what reports and run records use.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from revise._io.atomic import atomic_path
from revise._io.digests import sha256_bytes
from revise._io.temporaries import check_finished
from revise._io.text import not_utf8
from revise.errors import DataError

# name -> meaning. Order is the column order written to disk.
COLUMNS: dict[str, str] = {
    "sample_key": "stable key of the image/frame: s-<hash of SOPInstanceUID and frame>",
    "path": "file the pixels come from",
    "frame": "0-based frame number inside the file",
    "sop_instance_uid": "SOPInstanceUID (an instance identifier, not a patient identifier)",
    "series_uid": "SeriesInstanceUID",
    "study_uid": "StudyInstanceUID",
    "patient": "keyed pseudonym of PatientID (never the ID itself), empty when there is none",
    "modality": "Modality",
    "manufacturer": "Manufacturer",
    "device": "ManufacturerModelName",
    "device_serial": "DeviceSerialNumber",
    "body_part": "BodyPartExamined",
    "study_date": "StudyDate as an ISO date (YYYY-MM-DD), empty when absent",
    "photometric": "PhotometricInterpretation",
    "rows": "Rows",
    "cols": "Columns",
    "frames": "NumberOfFrames of the file",
    "samples_per_pixel": "SamplesPerPixel",
    "transfer_syntax": "TransferSyntaxUID",
    "site": "site name given at indexing",
    "loader": "name of the site loader that reads the pixels (dicom, or a plugin's)",
    "label": "class index (integer) or empty when unlabelled",
    "split": "train / heldout or empty",
}

# Selection aliases: what users may write -> the manifest column.
ALIASES: dict[str, str] = {
    "manufacturer_model_name": "device",
    "model_name": "device",
    "patient_key": "patient",
    "bodypart": "body_part",
    "date": "study_date",
}

INT_COLUMNS = ("frame", "rows", "cols", "frames", "samples_per_pixel")

# Columns a report never groups by and an error never lists values of: file paths can carry
# patient names.
FORBIDDEN_COLUMNS = ("path",)

# The split values a label file may give (an empty cell counts as training, like "train").
SPLITS = ("train", "heldout")


def empty_manifest() -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series(dtype="object") for name in COLUMNS})


def normalize(df: pd.DataFrame) -> pd.DataFrame:
    """Order the known columns first, fix dtypes (label as nullable Int64)."""
    df = df.copy()
    for name in COLUMNS:
        if name not in df.columns:
            df[name] = pd.NA
    for name in INT_COLUMNS:
        df[name] = pd.to_numeric(df[name], errors="coerce").astype("Int64")
    df["label"] = pd.to_numeric(df["label"], errors="coerce").astype("Int64")
    extra = [c for c in df.columns if c not in COLUMNS]
    return df[list(COLUMNS) + extra].reset_index(drop=True)


def save(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a manifest atomically as .csv or .parquet (by suffix)."""
    path = Path(path)
    df = normalize(df)
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        elif path.suffix == ".csv":
            df.to_csv(tmp, index=False)
        else:
            raise DataError(
                f"cannot write manifest {path}: unknown suffix", hint="use .csv or .parquet"
            )
    return path


_CSV_HINT = "save it as UTF-8 (e.g. 'CSV UTF-8' in Excel) and run again"


def load(path: str | os.PathLike) -> pd.DataFrame:
    path = Path(path)
    check_finished(path, "manifest")  # never an interrupted write's temporary
    if not path.exists():
        raise DataError(
            f"manifest {path} does not exist", hint="create it with `revise index DIR -o ...`"
        )
    try:
        if path.suffix == ".parquet":
            df = pd.read_parquet(path)
        elif path.suffix == ".csv":
            df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
        else:
            raise DataError(
                f"cannot read manifest {path}: unknown suffix", hint="use .csv or .parquet"
            )
    except DataError:
        raise
    except UnicodeDecodeError:
        raise not_utf8(path, "manifest", hint=_CSV_HINT) from None
    except PermissionError:  # the file is fine: only this user may not read it
        raise DataError(
            f"manifest {path} is not readable by this user (permission denied)",
            hint=f"give read permission (e.g. chmod a+r {path}) or run as its owner",
        ) from None
    except Exception as exc:  # pyarrow/pandas raise many types for a broken file
        raise DataError(
            f"manifest {path} is unreadable: {exc}", hint="re-create it with `revise index`"
        ) from exc
    missing = [c for c in ("sample_key", "path") if c not in df.columns]
    if missing:
        raise DataError(
            f"manifest {path} lacks column(s) {', '.join(missing)}",
            hint="re-create it with `revise index`",
        )
    _check_keys(df, path)
    return normalize(df)


def _check_keys(df: pd.DataFrame, path: Path) -> None:
    """Every row needs a sample_key of its own: results are joined back to rows by key, so a
    repeated key mixes rows up silently (every key the same: one row's answer for all)."""
    keys = df["sample_key"]
    empty = np.flatnonzero((keys.astype("string").str.strip().fillna("") == "").to_numpy(bool))
    if len(empty):
        more = f" ({len(empty) - 1} more such rows)" if len(empty) > 1 else ""
        raise DataError(
            f"manifest {path} {_rows(path, empty[0])}: sample_key is empty{more}",
            hint="re-create the manifest with `revise index`",
        )
    repeated = keys.duplicated(keep=False).to_numpy()
    if not repeated.any():
        return
    first = int(np.argmax(repeated))
    second = int(np.flatnonzero(repeated & (keys == keys.iloc[first]).to_numpy())[1])
    others = int(repeated.sum()) - 2
    more = f"{others} more rows repeat a key; " if others else ""
    raise DataError(
        f"manifest {path} {_rows(path, first, second)}: the same sample_key ({more}every row needs "
        "its own key)",
        hint="re-create the manifest with `revise index`, which keys copies of an image apart",
    )


def _rows(path: Path, *positions: int) -> str:
    """Rows as messages name them (from 0-based positions): CSV lines (the header is line 1),
    or rows counted from 1."""
    offset, unit = (2, "line") if path.suffix == ".csv" else (1, "row")
    numbers = " and ".join(str(int(p) + offset) for p in positions)
    return f"{unit}{'s' if len(positions) > 1 else ''} {numbers}"


def digest(df: pd.DataFrame) -> str:
    """Digest of a selection: the sorted sample keys (order-free, PHI-free)."""
    keys = sorted(df["sample_key"].astype(str))
    return sha256_bytes("\n".join(keys).encode())


def join_labels(
    df: pd.DataFrame,
    labels_csv: str | os.PathLike,
    *,
    base_dir: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Join a label CSV: a key column (sop_instance_uid | sample_key | path) and ``label``,
    optionally ``split`` (train / heldout). Relative paths in a ``path`` column are relative
    to ``base_dir`` (the indexed folder; default: the current folder).

    Rows without a match keep what they had. A CSV whose keys match nothing is an error (it is
    almost always the wrong file or the wrong key column).
    """
    try:
        # Blank lines kept as rows, so that row i is line i + 2 of the file in messages.
        table = pd.read_csv(labels_csv, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except UnicodeDecodeError:
        raise not_utf8(labels_csv, "label file", hint=_CSV_HINT) from None
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"label file {labels_csv} is unreadable: {exc}") from exc
    if "label" not in table.columns:
        raise DataError(
            f"label file {labels_csv} has no 'label' column (its header: "
            f"{','.join(map(str, table.columns))})",
            hint="header: sop_instance_uid|sample_key|path,label[,split]",
        )
    table = table[(table.apply(lambda col: col.str.strip()) != "").any(axis=1)]
    table = _checked_labels(table, labels_csv)
    key = next((k for k in ("sop_instance_uid", "sample_key", "path") if k in table.columns), None)
    if key is None:
        raise DataError(
            f"label file {labels_csv} has no key column",
            hint="add one of sop_instance_uid, sample_key or path",
        )
    out = df.copy()
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    if key == "path":
        table[key] = table[key].map(lambda p: str((base / p).resolve()))
        keys = out["path"].map(lambda p: str(Path(p).resolve()))
    else:
        table[key] = table[key].str.strip()  # UIDs and sample keys hold no blanks
        keys = out[key].astype(str)
    _refuse_conflicts(table, key, labels_csv)
    table = table.drop_duplicates(subset=key, keep="last").set_index(key)
    matched = keys.isin(table.index)
    if not matched.any():
        example = (
            f" (e.g. the label file has {table.index[0]}, the manifest {keys.iloc[0]})"
            if len(table) and len(keys)
            else ""
        )
        raise DataError(
            f"no row of label file {labels_csv} matches the manifest by {key}{example}",
            hint="relative paths are relative to the indexed folder"
            if key == "path"
            else "check the key column",
        )
    for column in ("label", "split"):
        if column in table.columns:
            values = keys.map(table[column]).replace("", pd.NA)
            out[column] = values.where(matched, out[column])
    return normalize(out)


def _checked_labels(table: pd.DataFrame, source: str | os.PathLike) -> pd.DataFrame:
    """Labels as integer text and splits as train/heldout/empty; anything else is an error.

    A label such as ``pneumonia`` would otherwise become "unlabelled" and a split such as
    ``test`` would put held-out rows into training, both silently.
    """
    table = table.copy()
    label = table["label"].str.strip()
    number = pd.to_numeric(label.mask(label == ""), errors="coerce")
    integral = number.notna() & (number % 1 == 0) & (number.abs() < 2**31)  # "1.0" is fine
    _refuse(
        table,
        (label != "") & ~integral,
        "label",
        source,
        "is not a class index",
        "labels are integers such as 0 or 1; leave the cell empty for an unlabelled row",
    )
    table["label"] = label
    if "split" in table.columns:
        split = table["split"].str.strip().str.lower()
        _refuse(
            table,
            ~split.isin(("", *SPLITS)),
            "split",
            source,
            f"is not one of {', '.join(SPLITS)}",
            "write train or heldout (held-out rows must say heldout), or leave it empty "
            "for training",
        )
        table["split"] = split
    return table


def _refuse_conflicts(table: pd.DataFrame, key: str, source: str | os.PathLike) -> None:
    """Two rows for one image that disagree on its label or split are an error: which is right
    cannot be guessed (the last row used to win, silently). Rows that repeat each other are
    harmless (either gives the same result; concatenated label exports repeat rows): kept."""
    meaning = {
        "label": lambda c: pd.to_numeric(c.mask(c == ""), errors="coerce"),  # "1" is "1.0"
        "split": lambda c: c.mask(c == "", "train"),  # an empty split means training
    }
    for column, value in meaning.items():
        if column not in table.columns:
            continue
        values = value(table[column])
        differs = values.groupby(table[key]).transform("nunique", dropna=False) > 1
        if not differs.any():
            continue
        first = differs.idxmax()
        same = table.index[differs & (table[key] == table.at[first, key])]
        others = table.loc[differs, key].nunique() - 1
        more = f" ({others} more such {key}s)" if others else ""
        raise DataError(
            f"label file {source} lines {int(first) + 2} and {int(same[1]) + 2}: the same {key} "
            f"with different {column}{more}",
            hint=f"keep one row per image: which {column} is right cannot be guessed",
        )


def _refuse(
    table: pd.DataFrame,
    bad: pd.Series,
    column: str,
    source: str | os.PathLike,
    problem: str,
    fix: str,
) -> None:
    """Raise naming the first bad cell's line (header is line 1) and how many cells are bad."""
    if not bad.any():
        return
    first = bad.idxmax()
    value = str(table.at[first, column])
    value = value if len(value) <= 40 else value[:37] + "..."
    others = int(bad.sum()) - 1
    more = f" ({others} more such rows)" if others else ""
    raise DataError(
        f"label file {source} line {int(first) + 2}: {column} {value!r} {problem}{more}",
        hint=fix,
    )
