"""``among``: a column among many values; on Postgres, the values as one parameter."""

from __future__ import annotations

import pytest
from sqlalchemy import BigInteger, Column, MetaData, Table, Text, insert, select

from careflow.engine.steps import among, array_text

TRICKY = [
    "plain",
    'with "quotes"',
    "back\\slash",
    "it's",
    "a,b",
    "{braces}",
    " spaced ",
    "NULL",
    "",
    "환자-1",
    "tab\there",
    '\\"',
]


def test_array_text_quotes_every_value_and_escapes_only_what_needs_it() -> None:
    assert array_text(["a", "b"]) == '{"a","b"}'
    assert array_text(['x"y', "p\\q"]) == '{"x\\"y","p\\\\q"}'
    assert array_text([3, 1, 2]) == "{3,1,2}"
    assert array_text([]) == "{}"
    # anything else keeps the driver's own array: None, a bool (an int written True), a mix
    for values in (["a", None], [True], ["a", 1], [1.5]):
        assert array_text(values) is None


@pytest.fixture
def probe(engine):  # type: ignore[no-untyped-def]
    metadata = MetaData()
    table = Table("among_probe", metadata, Column("id", Text, primary_key=True), Column("n", BigInteger))
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(table), [{"id": v, "n": i} for i, v in enumerate([*TRICKY, "other", "plain2"])])
    yield table
    metadata.drop_all(engine)


def test_among_finds_exactly_the_values_given(engine, probe) -> None:
    with engine.connect() as conn:

        def ids(*where: object) -> set[object]:
            return set(conn.execute(select(probe.c.id).where(*where)).scalars())

        def numbers(*where: object) -> set[object]:
            return set(conn.execute(select(probe.c.n).where(*where)).scalars())

        assert ids(among(conn, probe.c.id, TRICKY)) == set(TRICKY)
        assert ids(among(conn, probe.c.id, ["plain", "missing"])) == {"plain"}
        assert ids(among(conn, probe.c.id, [])) == set()
        assert ids(among(conn, probe.c.id, iter(["a,b", "NULL"]))) == {"a,b", "NULL"}  # any iterable
        assert numbers(among(conn, probe.c.n, [0, 2, 99])) == {0, 2}
        # whole numbers given as text, as a clinic's integer ids may come
        assert numbers(among(conn, probe.c.n, ["1", "3"])) == {1, 3}
        # values of another kind go as before
        assert ids(among(conn, probe.c.id, ["plain", None])) == {"plain"}


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_on_postgres_ids_go_as_one_string_not_an_array_of_constants(engine, probe) -> None:
    """The driver would write ``ARRAY['a', 'b', …]``: a thousand constants for the server to parse."""
    with engine.connect() as conn:
        compiled = (
            select(probe.c.id).where(among(conn, probe.c.id, ["a", 'b"c'])).compile(dialect=conn.dialect)
        )
        assert list(compiled.params.values()) == ['{"a","b\\"c"}']
        compiled = select(probe.c.n).where(among(conn, probe.c.n, [1, 2])).compile(dialect=conn.dialect)
        assert list(compiled.params.values()) == ["{1,2}"]


def test_a_clinics_rows_are_found_by_their_ids_exactly(engine, probe) -> None:
    """``_rows_of`` (the facts' patients and appointments): joined to ``unnest`` of the ids on Postgres."""
    from careflow.engine.steps import _rows_of

    with engine.connect() as conn:

        def found(ids: list[object]) -> dict[object, object]:
            return {row.id: row.n for row in conn.execute(_rows_of(conn, probe, ids))}

        assert found(TRICKY) == {value: TRICKY.index(value) for value in TRICKY}
        assert found(["plain", "missing"]) == {"plain": 0}
        assert found([]) == {}
