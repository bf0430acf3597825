"""The selection language: exact rows selected on a realistic manifest, and helpful, safe errors."""

from __future__ import annotations

import builtins
import datetime as dt

import pandas as pd
import pytest

from revise.data.manifest import COLUMNS
from revise.data.select import Compare, columns_used, mask, parse, select
from revise.errors import SelectionError
from revise.phi import pseudonym

KEY = b"k"

# sample_key, device (DICOM-padded), label, study_date, clear patient ID, rows, body_part, split
ROWS = [
    ("s-1", "Cirrus 800 FA  ", 0, "2018-03-01", "MRN001", 512, "EYE ", "train"),
    ("s-2", "Cirrus 800 FA", 1, "2019-06-15", "MRN001", 1024, "EYE", "heldout"),
    ("s-3", "Spectralis ", 2, "", "MRN002", 496, "RETINA", "train"),
    ("s-4", "Spectralis", None, "2017-12-31", "MRN003", 768, "EYE", ""),
    ("s-5", "Cirrus 5000 HD-OCT", 1, "20180704", "MRN004", 512, "", "train"),
    ("s-6", "", 0, None, "MRN005", None, "KNEE", "heldout"),
]


@pytest.fixture
def df() -> pd.DataFrame:
    """A manifest as indexing writes it: pseudonymous patients, Int64 numbers, padded strings."""
    data: dict[str, object] = {name: [None] * len(ROWS) for name in COLUMNS}
    keys, devices, labels, dates, patients, rows, parts, splits = zip(*ROWS, strict=True)
    data |= {
        "sample_key": list(keys),
        "path": [f"/data/site/{k}.dcm" for k in keys],
        "frame": pd.array([0] * len(ROWS), dtype="Int64"),
        "patient": [pseudonym(p, key=KEY) for p in patients],
        "modality": ["OPT"] * len(ROWS),
        "manufacturer": ["Zeiss", "Zeiss", "Heidelberg", "Heidelberg", "Zeiss", "Topcon"],
        "device": list(devices),
        "body_part": list(parts),
        "study_date": list(dates),
        "rows": pd.array(rows, dtype="Int64"),
        "label": pd.array(labels, dtype="Int64"),
        "split": list(splits),
        "site": ["north"] * len(ROWS),
    }
    return pd.DataFrame(data)


def keys(df: pd.DataFrame, expr: str, **kwargs) -> list[str]:
    return sorted(select(df, expr, key=KEY, allow_empty=True, **kwargs)["sample_key"])


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ('device == "Cirrus 800 FA"', ["s-1", "s-2"]),
        ('device != "Cirrus 800 FA"', ["s-3", "s-4", "s-5"]),  # the empty device never matches
        ("label in [0, 2]", ["s-1", "s-3", "s-6"]),
        ("label == 1", ["s-2", "s-5"]),
        ("not label in [1]", ["s-1", "s-3", "s-4", "s-6"]),  # negation keeps the unlabelled row
        ("label not in [1]", ["s-1", "s-3", "s-6"]),  # a comparison: missing never matches
        ("label != 1", ["s-1", "s-3", "s-6"]),
        # and binds tighter than or
        ('device == "Spectralis" or label == 1 and rows >= 1024', ["s-2", "s-3", "s-4"]),
        ('(device == "Spectralis" or label == 1) and rows >= 1024', ["s-2"]),
        ('not (split == "train" or split is empty)', ["s-2", "s-6"]),
        ("study_date < 2019-01-01", ["s-1", "s-4", "s-5"]),  # s-5 is a DICOM YYYYMMDD date
        ("study_date >= 2018-07-04 AND study_date <= 2019-06-15", ["s-2", "s-5"]),
        ("rows >= 512", ["s-1", "s-2", "s-4", "s-5"]),
        ("rows < 500.5", ["s-3"]),
        (r'device ~= "^Cirrus \d+ FA$"', ["s-1", "s-2"]),
        ('device ~= "(?i)spectralis"', ["s-3", "s-4"]),
        ("device is empty", ["s-6"]),
        ("study_date is empty", ["s-3", "s-6"]),
        ("study_date is not empty", ["s-1", "s-2", "s-4", "s-5"]),
        ('manufacturer_model_name == "Spectralis"', ["s-3", "s-4"]),
        ('bodypart == "EYE"', ["s-1", "s-2", "s-4"]),
        ("date == 2018-07-04", ["s-5"]),
        ("label in [0, 2,] and split in ['heldout']", ["s-6"]),
    ],
)
def test_selects_exact_rows(df: pd.DataFrame, expr: str, expected: list[str]) -> None:
    assert keys(df, expr) == expected


def test_file_list_skips_comments_and_blank_lines(df: pd.DataFrame, tmp_path) -> None:
    (tmp_path / "devices.txt").write_text(
        "# devices to forget\n\nSpectralis\n   Cirrus 5000 HD-OCT  \n# Cirrus 800 FA\n"
    )
    (tmp_path / "my list.txt").write_text("Spectralis\n")
    assert keys(df, "device in @devices.txt", base_dir=tmp_path) == ["s-3", "s-4", "s-5"]
    assert keys(df, 'device not in @"my list.txt"', base_dir=tmp_path) == ["s-1", "s-2", "s-5"]


def test_patient_file_holds_clear_ids_hashed_with_the_key(df: pd.DataFrame, tmp_path) -> None:
    direct = pseudonym("MRN005", key=KEY)
    (tmp_path / "forget.txt").write_text(f"# forget requests\nMRN001\n\n  MRN003\n{direct}\n")
    assert keys(df, "patient in @forget.txt", base_dir=tmp_path) == ["s-1", "s-2", "s-4", "s-6"]
    assert keys(df, 'patient == "MRN002"') == ["s-3"]
    assert keys(df, f'patient_key == "{direct}"') == ["s-6"]
    assert keys(df, "patient == 00123") == []  # a bare ID stays text: hashed, not a number
    # Another key gives other pseudonyms, so clear IDs find nothing.
    assert select(df, 'patient == "MRN002"', key=b"other", allow_empty=True).empty


def test_mask_is_a_bool_series_aligned_with_the_frame(df: pd.DataFrame) -> None:
    df.index = [10, 11, 12, 13, 14, 15]
    result = mask(df, parse("rows >= 512"))
    assert result.dtype == bool
    assert list(result.index) == list(df.index)
    assert result.tolist() == [True, True, False, True, True, False]


def test_canonical_text_reparses_to_the_same_tree() -> None:
    text = "NOT (a == 1 Or b in [2, 'x\\'y', 2019-01-01, true]) and (c is not empty or d ~= \"^x\")"
    expr = parse(text)
    assert str(expr) == (
        'not (a == 1 or b in [2, "x\'y", 2019-01-01, true]) and (c is not empty or d ~= "^x")'
    )
    assert parse(str(expr)) == expr
    assert parse("date == 2019-01-01") == Compare("study_date", "==", dt.date(2019, 1, 1))


def test_columns_used_resolves_aliases() -> None:
    expr = 'model_name == "X" or (date < 2019-01-01 and label in [1])'
    assert columns_used(expr) == {"device", "study_date", "label"}


def test_unknown_column_suggests_the_closest(df: pd.DataFrame) -> None:
    with pytest.raises(SelectionError) as info:
        mask(df, 'devcie == "Spectralis"')
    message = str(info.value)
    assert "unknown column 'devcie'" in message
    assert "did you mean 'device'?" in message
    assert "sample_key, path, frame" in message


def test_syntax_error_shows_a_caret() -> None:
    with pytest.raises(SelectionError) as info:
        parse("device == ")
    assert str(info.value) == (
        "selection: expected a value after '==' at column 11:\n  device == \n            ^"
    )
    with pytest.raises(SelectionError, match=r"quote text values: \"train\""):
        parse("split == train")


def test_empty_match_lists_existing_values(df: pd.DataFrame) -> None:
    with pytest.raises(SelectionError) as info:
        select(df, 'device == "Cirrus 800" and label in [1]')
    message = str(info.value)
    assert "matched 0 of 6 rows" in message
    assert '"Cirrus 800 FA"' in message
    assert '"Spectralis"' in message
    assert select(df, 'device == "Cirrus 800"', allow_empty=True).empty


def test_empty_patient_match_never_repeats_clear_ids(df: pd.DataFrame, tmp_path) -> None:
    (tmp_path / "ids.txt").write_text("MRN998\nMRN999\nMRN001\n")
    with pytest.raises(SelectionError) as info:
        select(df, 'patient in @ids.txt and device == "Spectralis"', base_dir=tmp_path, key=KEY)
    message = str(info.value)
    assert "2 of 3 patient identifiers matched none" in message
    assert "MRN" not in message
    with pytest.raises(SelectionError) as info:
        parse('patient == "MRN001" oops')
    assert "MRN001" not in str(info.value)


def test_missing_list_file_names_the_path(df: pd.DataFrame, tmp_path) -> None:
    with pytest.raises(SelectionError, match=r"nope\.txt.*does not exist"):
        mask(df, "device in @nope.txt", base_dir=tmp_path)


def test_patient_allows_only_equality(df: pd.DataFrame) -> None:
    with pytest.raises(SelectionError, match="keyed pseudonyms"):
        parse('patient ~= "MRN"')


def test_no_python_is_ever_evaluated(df: pd.DataFrame, monkeypatch) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("the selection language must not evaluate Python")

    for owner, name in [(builtins, "eval"), (builtins, "exec"), (pd, "eval")]:
        monkeypatch.setattr(owner, name, forbidden)
    monkeypatch.setattr(pd.DataFrame, "query", forbidden)
    monkeypatch.setattr(pd.DataFrame, "eval", forbidden)

    with pytest.raises(SelectionError, match=r"after '__import__', found '\('"):
        mask(df, "__import__('os') == 1")
    with pytest.raises(SelectionError, match=r"unexpected character '\.'"):
        mask(df, "__import__('os').system('echo hacked') == 1")
    with pytest.raises(SelectionError, match="expected a value"):
        mask(df, "device == __import__('os')")
    # As a quoted value it is data: compared as text, it matches nothing.
    payload = "__import__('os').system('echo hacked')"
    assert not mask(df, f'device == "{payload}" or device ~= "{payload}"').any()
    assert keys(df, 'device == "Spectralis" and label in [2]') == ["s-3"]


def test_describe_hides_patient_values_but_keeps_the_rest():
    from revise.data.select import describe

    text = describe('patient in ["MRN001", "MRN002"] or device == "Cirrus 800 FA"')
    assert "MRN001" not in text and "MRN002" not in text
    assert "2 identifiers" in text and '"Cirrus 800 FA"' in text


def test_describe_hides_file_paths_which_can_name_patients():
    from revise.data.select import describe

    text = describe('path == "/site/DOE^JOHN/1.dcm" or path ~= "^/site/ROE" or label == 2')
    assert "DOE" not in text and "ROE" not in text
    assert text == "path == <identifier> or path ~= <identifier> or label == 2"


@pytest.mark.parametrize(
    "expr",
    [
        "study_date < 20190101",
        "not study_date == 20180301",  # without the check: every row
        "date in [2018, 2019-06-15]",
    ],
)
def test_a_number_compared_with_a_date_column_is_refused(df: pd.DataFrame, expr: str) -> None:
    with pytest.raises(SelectionError) as info:
        mask(df, expr)
    message = str(info.value)
    assert "study_date holds dates, not numbers" in message and "YYYY-MM-DD" in message
    stamped = df.assign(scanned=pd.to_datetime(["2020-01-01"] * len(df)))  # a datetime column
    with pytest.raises(SelectionError, match="scanned holds dates"):
        mask(stamped, "scanned >= 2020")
    assert keys(stamped, "scanned >= 2020-01-01") == sorted(df["sample_key"])


def test_not_in_an_empty_list_file_selects_every_row_with_a_value(df, tmp_path) -> None:
    (tmp_path / "none.txt").write_text("# nobody to exclude yet\n\n")
    assert keys(df, "device not in @none.txt", base_dir=tmp_path) == [
        "s-1",
        "s-2",
        "s-3",
        "s-4",
        "s-5",
    ]
    assert keys(df, "label not in @none.txt", base_dir=tmp_path) == [
        "s-1",
        "s-2",
        "s-3",
        "s-5",
        "s-6",
    ]
    assert keys(df, "device in @none.txt", base_dir=tmp_path) == []


@pytest.mark.parametrize(
    "text",
    [
        'patient == "X1234',  # unterminated: starred from the quote on
        "patient == X1234#",  # the stray character belongs to the ID
        "patient == #X1234",
        "patient == 9X1234",  # a malformed number
        'device == "a" and patient in ["MRN001", X1234$]',
    ],
)
def test_syntax_errors_never_show_any_part_of_a_patient_value(text: str) -> None:
    with pytest.raises(SelectionError) as info:
        parse(text)
    message = str(info.value)
    shown = message.splitlines()[1]
    for secret in ("X", "1234", "#", "$", "9", "MRN"):
        assert secret not in shown and f"'{secret}'" not in message, (secret, message)
    assert "^" in message.splitlines()[2]


def test_unexpected_character_elsewhere_is_still_named() -> None:
    with pytest.raises(SelectionError, match=r"unexpected character '#'"):
        parse("device == a#b")


# --------------------------------------------------------------------------------------------
# random(FRACTION, seed=N, by=COLUMN): a reproducible share of the rows or of whole groups
# --------------------------------------------------------------------------------------------

PATIENTS, PER_PATIENT = 500, 8  # 4,000 rows


@pytest.fixture
def big() -> pd.DataFrame:
    """4,000 rows of 500 patients (8 rows each, not next to each other), labels 0-4."""
    n = PATIENTS * PER_PATIENT
    return pd.DataFrame(
        {
            "sample_key": [f"k-{i:05d}" for i in range(n)],
            "patient": [pseudonym(f"MRN{i % PATIENTS}", key=KEY) for i in range(n)],
            "label": pd.array([i % 5 for i in range(n)], dtype="Int64"),
        }
    )


def within_binomial(count: int, n: int, p: float, sigmas: float = 4.0) -> bool:
    return abs(count - n * p) <= sigmas * (n * p * (1 - p)) ** 0.5


def chosen_keys(df: pd.DataFrame, expr: str) -> set[str]:
    return set(df.loc[mask(df, expr).to_numpy(), "sample_key"])


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.5, 0.9])
def test_random_chooses_the_fraction_within_a_binomial_bound(big, fraction) -> None:
    for seed in (0, 7):
        count = int(mask(big, f"random({fraction}, seed={seed})").sum())
        assert within_binomial(count, len(big), fraction), (fraction, seed, count)
    assert mask(big, "random(1)").all()  # fraction 1: every row with a key


def test_random_same_seed_same_rows_other_seed_other_rows(big) -> None:
    first = chosen_keys(big, "random(0.3, seed=3)")
    assert chosen_keys(big, "random(0.3, seed=3)") == first
    assert chosen_keys(big, "random(0.3)") == chosen_keys(big, "random(0.3, seed=0)")
    other = chosen_keys(big, "random(0.3, seed=4)")
    assert other != first
    # Seeds draw independently: the overlap is about 0.3 * 0.3 of the rows.
    assert within_binomial(len(first & other), len(big), 0.3 * 0.3)
    # A larger fraction with the same seed keeps every row the smaller one chose.
    assert chosen_keys(big, "random(0.1, seed=3)") <= first


def test_random_is_independent_of_row_order_and_of_other_rows(big) -> None:
    expected = chosen_keys(big, "random(0.2, seed=5)")
    shuffled = big.sample(frac=1.0, random_state=1).set_index(pd.Index(range(len(big), 0, -1)))
    assert chosen_keys(shuffled, "random(0.2, seed=5)") == expected
    # A slice of the manifest, grown with rows of new patients: the old rows keep their choice.
    part = big.iloc[1000:1800]
    extra = pd.DataFrame(
        {
            "sample_key": [f"new-{i}" for i in range(3000)],
            "patient": [pseudonym(f"NEW{i}", key=KEY) for i in range(3000)],
            "label": pd.array([0] * 3000, dtype="Int64"),
        }
    )
    grown = pd.concat([extra, part], ignore_index=True)
    assert chosen_keys(grown, "random(0.2, seed=5)") & set(part["sample_key"]) == expected & set(
        part["sample_key"]
    )


def test_random_by_patient_chooses_whole_patients(big) -> None:
    chosen = mask(big, "random(0.3, seed=2, by=patient)")
    per_patient = chosen.groupby(big["patient"]).agg(["all", "any"])
    assert (per_patient["all"] == per_patient["any"]).all()  # all of a patient's rows, or none
    patients = int(per_patient["all"].sum())
    assert within_binomial(patients, PATIENTS, 0.3)
    assert int(chosen.sum()) == patients * PER_PATIENT
    # by= resolves aliases, and a patient's draw does not depend on the other patients.
    assert mask(big, "random(0.3, seed=2, by=patient_key)").equals(chosen)
    some = big[big["patient"].isin(big["patient"].unique()[:40])]
    assert mask(some, "random(0.3, seed=2, by=patient)").equals(chosen.loc[some.index])


def test_random_combines_with_and_or_not(big) -> None:
    both = mask(big, "label == 3 and random(0.5)")
    assert both.equals(mask(big, "label == 3") & mask(big, "random(0.5)"))
    assert within_binomial(int(both.sum()), len(big) // 5, 0.5)
    assert mask(big, "not random(0.1, seed=1)").equals(~mask(big, "random(0.1, seed=1)"))
    either = mask(big, "random(0.2) or random(0.2, seed=1)")
    assert either.equals(mask(big, "random(0.2)") | mask(big, "random(0.2, seed=1)"))


def test_random_draws_are_pinned_to_sha256(df: pd.DataFrame) -> None:
    """The same rows on every machine and every version: a site can re-run its selection."""
    import hashlib

    from revise.data._select_eval import draw

    digest = hashlib.sha256(b"revise.random\x000\x00sample_key\x00s-2").digest()
    assert draw(0, "sample_key", "s-2") == (int.from_bytes(digest[:8], "big") >> 11) / 2**53
    assert keys(df, "random(0.5)") == ["s-2"]
    assert keys(df, "random(0.5, seed=1)") == ["s-3", "s-4", "s-6"]
    assert keys(df, "random(0.7) and label is not empty") == ["s-2", "s-3"]


def test_random_never_chooses_a_row_without_its_key(df: pd.DataFrame) -> None:
    df.loc[df["sample_key"] == "s-2", "sample_key"] = None
    df.loc[df["sample_key"] == "s-4", "patient"] = "  "  # blank: missing
    assert "s-2" not in keys(df, "random(1)")
    assert sorted(df.loc[mask(df, "random(1, by=patient)").to_numpy(), "sample_key"].dropna()) == [
        "s-1",
        "s-3",
        "s-5",
        "s-6",
    ]
    assert mask(df, "not random(1)").tolist() == [False, True, False, False, False, False]


def test_random_text_reparses_and_describes_itself() -> None:
    from revise.data.select import describe

    expr = parse("label == 3 AND Random(0.25, by=patient_key, seed=3,)")
    assert str(expr) == "label == 3 and random(0.25, seed=3, by=patient)"
    assert describe(expr) == str(expr)  # nothing to hide: by= names a column, not a value
    assert parse(str(expr)) == expr
    assert str(parse("random(1)")) == "random(1.0, seed=0)"
    assert parse("random(0.5, by=sample_key)") == parse("random(0.5)")
    assert columns_used("random(0.1)") == {"sample_key"}
    assert columns_used("random(0.1, by=date) or label == 1") == {"study_date", "label"}


def test_a_column_named_random_is_still_a_column(df: pd.DataFrame) -> None:
    df["random"] = [1, 2, 3, 4, 5, 6]
    assert keys(df, "random >= 5 or random in [1]") == ["s-1", "s-5", "s-6"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("random()", "random() needs the fraction to choose first, found ')'"),
        ("random(0)", "a fraction above 0 and at most 1, not 0 "),
        ("random(-0.1)", "a fraction above 0 and at most 1, not -0.1 "),
        ("random(10)", "not 10 (for 10% write 0.1)"),
        ('random("0.1")', "needs the fraction to choose first, found a string"),
        ("random(0.1, 3)", "name the seed: seed=N"),
        ("random(0.1, seed=-1)", "seed= takes a whole number >= 0, not -1 "),
        ("random(0.1, seed=1.5)", "seed= takes a whole number >= 0, not 1.5 "),
        ("random(0.1, seed=2019-01-01)", "seed= takes a whole number >= 0, found a date"),
        ("random(0.1, seed=1, seed=2)", "random() is given seed= twice"),
        ("random(0.1, fraction=1)", "random() takes seed= and by=, not 'fraction='"),
        ('random(0.1, by="patient")', "by= takes a column name without quotes, found a string"),
        ("random(0.1, by=)", "by= takes a column name, found ')'"),
        ("random(0.1", "expected ')' to close random()"),
        ("random 0.1", "(or random(FRACTION) for a random share)"),
        ("device = 1", "unexpected '=' (use '==' to compare)"),
    ],
)
def test_random_refuses_bad_arguments_with_a_caret(text: str, message: str) -> None:
    with pytest.raises(SelectionError) as info:
        parse(text)
    assert message in str(info.value), str(info.value)
    assert str(info.value).splitlines()[2].strip() == "^"


def test_random_by_an_unknown_column_suggests_the_closest(df: pd.DataFrame) -> None:
    with pytest.raises(SelectionError) as info:
        mask(df, "random(0.1, by=patinet)")
    assert "unknown column 'patinet' (did you mean 'patient'?)" in str(info.value)


def test_random_by_patient_hides_nothing_it_need_not(df: pd.DataFrame) -> None:
    """by=patient names the column, not a patient: a caret line keeps what follows it."""
    with pytest.raises(SelectionError) as info:
        parse("random(0.1, by=patient, seed=x)")
    assert "random(0.1, by=patient, seed=x)" in str(info.value)
