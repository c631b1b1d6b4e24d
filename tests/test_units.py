import pytest

from tspsim.core.errors import TspsimError
from tspsim.core.units import format_bytes, format_tokens, parse_int_list, parse_size, parse_size_list


@pytest.mark.parametrize(("text", "expected"), [
    ("64", 64),
    ("0", 0),
    ("1k", 1024),
    ("8k", 8192),
    ("128k", 131072),
    ("128K", 131072),
    ("1M", 1048576),
    ("1m", 1048576),
    ("1G", 1073741824),
    ("4G", 4 * 2**30),
    ("1T", 2**40),
    ("4MiB", 4 * 2**20),
    ("4MB", 4 * 2**20),
    ("4mb", 4 * 2**20),
    ("1.5k", 1536),
    ("0.5M", 524288),
    (" 2g ", 2 * 2**30),
    ("16 k", 16384),
    (5, 5),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected
    assert isinstance(parse_size(text), int)


@pytest.mark.parametrize("text", ["12q", "", "k", "-1", "1e3", "1.5", "0.1k", "1kk", "M1", "1 2", "1,0",
                                  "abc"])
def test_parse_size_rejects(text):
    with pytest.raises(TspsimError):
        parse_size(text)


def test_parse_size_rejects_negative_int():
    with pytest.raises(TspsimError, match="negative"):
        parse_size(-1)


def test_parse_size_error_names_what_and_value():
    with pytest.raises(TspsimError) as info:
        parse_size("12q", "sequence length")
    msg = str(info.value)
    assert "sequence length" in msg
    assert "'12q'" in msg
    assert "\n" not in msg


@pytest.mark.parametrize(("text", "expected"), [
    ("16k,32k", [16384, 32768]),
    ("1k", [1024]),
    ("1k,,2k,", [1024, 2048]),
    ("1, 2 ,3", [1, 2, 3]),
    ("1G,1k,1G", [2**30, 1024, 2**30]),
])
def test_parse_size_list(text, expected):
    assert parse_size_list(text) == expected


@pytest.mark.parametrize("text", ["", ",", " , ", "1k,12q", "12q"])
def test_parse_size_list_rejects(text):
    with pytest.raises(TspsimError):
        parse_size_list(text)


@pytest.mark.parametrize(("text", "expected"), [
    ("2,4,8", [2, 4, 8]),
    ("8", [8]),
    (" 2 , 4 ", [2, 4]),
    ("1,,3", [1, 3]),
    ("16,2", [16, 2]),
])
def test_parse_int_list(text, expected):
    assert parse_int_list(text) == expected


@pytest.mark.parametrize("text", ["", ",", "0", "2,0", "-1", "2k", "1.5", "a", "2,x"])
def test_parse_int_list_rejects(text):
    with pytest.raises(TspsimError):
        parse_int_list(text)


@pytest.mark.parametrize(("n", "expected"), [(1024, "1K"), (2**20, "1M"), (3 * 2**30, "3G"), (1000, "1000"),
                                             (1536, "1536")])
def test_format_bytes(n, expected):
    assert format_bytes(n) == expected


@pytest.mark.parametrize(("n", "expected"), [(131072, "128k"), (1000, "1000"), (2048, "2k")])
def test_format_tokens(n, expected):
    assert format_tokens(n) == expected


def test_round_trip():
    for n in (1024, 2**20, 5 * 2**30):
        assert parse_size(format_bytes(n)) == n
    assert parse_size(format_tokens(131072)) == 131072
