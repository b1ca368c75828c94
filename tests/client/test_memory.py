"""No public function, with any argument the application role can pass,
makes a backend grow by more than 64 MB (issue 13 §2).

Growth is the backend's peak resident set (`VmHWM` in /proc/<pid>/status)
after the call, minus its resident set before it. 0.1.0 rendered `data` to
JSON text before checking its 64 kB limit: 81 kB of `1e131071` numbers
peaked at 2.1 GB. And `session_list` kept its copies of every session's
data until the transaction ended: 3,000 calls in one loop peaked at 943 MB.
"""

import psycopg
import pytest

import sa

LIMIT_MB = 64


def kb(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def fresh_backend(connect):
    """A new connection (a fresh backend, so its peak starts low) and its pid."""
    conn = connect()
    conn.execute("SELECT session_validate('warm-up')").fetchall()
    return conn, conn.execute("SELECT pg_backend_pid() AS p").fetchone()["p"]


def growth_mb(pid, before_kb):
    return (kb(pid, "VmHWM") - before_kb) / 1024


HUGE_NUMBER = "1e131071"  # 131,072 digits as text, a few bytes as jsonb


def hostile_data():
    """(label, JSON text) that would expand enormously if rendered."""
    return [
        ("9000 numbers of 131,072 digits", '{"a": [' + ", ".join([HUGE_NUMBER] * 9000) + "]}"),
        ("one number of 131,072 digits", '{"a": ' + HUGE_NUMBER + "}"),
        ("negative exponent numbers", '{"a": [' + ", ".join(["1e-16383"] * 9000) + "]}"),
        ("escapes that expand sixfold", '{"a": "' + "\\u0001" * 20000 + '"}'),
        ("deep nesting", '{"a": ' + "[" * 5000 + "]" * 5000 + "}"),
        ("many small keys", "{" + ", ".join(f'"k{i}": {i}' for i in range(20000)) + "}"),
    ]


@pytest.mark.parametrize("label,text", hostile_data(), ids=[label for label, _ in hostile_data()])
def test_data_over_the_limit_is_refused_without_expanding_it(connect, label, text):
    conn, pid = fresh_backend(connect)
    before = kb(pid, "VmRSS")
    for sql, args in (("SELECT * FROM session_issue('mem-user', %s::jsonb)", [text]),
                      ("SELECT session_set_data(gen_random_uuid(), %s::jsonb)", [text])):
        try:
            conn.execute(sql, args)
        except psycopg.Error as e:
            assert e.sqlstate in ("22023", "54001"), (e.sqlstate, str(e)[:200])
    grew = growth_mb(pid, before)
    print(f"\n    {label}: backend grew {grew:.1f} MB")
    assert grew < LIMIT_MB, f"{label}: the backend grew {grew:.0f} MB"


def test_the_data_limit_counts_json_text_however_it_is_written(db):
    """64 kB of JSON text is accepted however the numbers and strings are
    spelled; one byte more is refused. A number's size is the size of its
    text as PostgreSQL writes it back (jsonb_out)."""
    def size(text):
        return db.execute("SELECT octet_length(%s::jsonb::text) AS n", [text]).fetchone()["n"]

    pad = 65536 - size('{"a": ""}')
    at_limit = '{"a": "' + "x" * pad + '"}'
    assert size(at_limit) == 65536
    db.execute("SELECT * FROM session_issue('mem-limit', %s::jsonb)", [at_limit])
    with pytest.raises(psycopg.Error) as e:
        db.execute("SELECT * FROM session_issue('mem-limit', %s::jsonb)", ['{"a": "' + "x" * (pad + 1) + '"}'])
    assert e.value.sqlstate == "22023"
    # 1e65530 is 65,531 bytes as text (jsonb writes every digit): over the limit with its key.
    with pytest.raises(psycopg.Error) as e:
        db.execute("SELECT * FROM session_issue('mem-limit', '{\"a\": 1e65530}')")
    assert e.value.sqlstate == "22023"
    db.execute("SELECT * FROM session_issue('mem-limit', '{\"a\": 1e65000}')")


def test_session_list_in_a_loop_frees_what_each_call_made(connect):
    conn, pid = fresh_backend(connect)
    big = {"blob": "y" * 60000}
    for _ in range(5):
        sa.issue(conn, "mem-list", big)
    before = kb(pid, "VmRSS")
    conn.execute("""
        DO $$
        DECLARE n bigint := 0;
        BEGIN
            FOR i IN 1..3000 LOOP
                n := n + (SELECT count(*) FROM session_list('mem-list'));
            END LOOP;
        END $$""")
    grew = growth_mb(pid, before)
    print(f"\n    3,000 session_list calls in one transaction: backend grew {grew:.1f} MB")
    assert grew < LIMIT_MB


def test_no_public_function_with_hostile_arguments_grows_a_backend(connect):
    conn, pid = fresh_backend(connect)
    s = sa.issue(conn, "mem-any", {"k": "v"})
    ten_mb = "x" * (10 * 1024 * 1024)
    calls = [
        ("SELECT * FROM session_validate(%s)", [ten_mb]),
        ("SELECT * FROM session_refresh(%s)", [ten_mb]),
        ("SELECT session_revoke(%s)", [ten_mb]),
        ("SELECT * FROM session_require(%s, '1000000 years', 3)", [ten_mb]),
        ("SELECT * FROM session_reauthenticate(%s, 3)", [ten_mb]),
        ("SELECT * FROM session_list(%s)", ["u" * 256]),
        ("SELECT session_revoke_user(%s)", ["u" * 256]),
        ("SELECT * FROM session_require(%s, '1000000 years', 3)", [s["access_token"]]),
        ("SELECT * FROM session_validate(%s)", [s["access_token"]]),
        ("SELECT session_purge()", []),
    ]
    # Receiving a 10 MB bind parameter costs PostgreSQL a few copies of it
    # whatever the function: measure that first, with a built-in.
    for _ in range(20):
        conn.execute("SELECT octet_length(%s)", [ten_mb]).fetchall()
    control = kb(pid, "VmHWM")
    for sql, args in calls:
        for _ in range(20):
            try:
                conn.execute(sql, args).fetchall()
            except psycopg.Error as e:
                assert e.sqlstate in ("22023", "22004", "SA001", "SA002", "SA003", "SA005", "22008"), e.sqlstate
    grew = growth_mb(pid, control)
    print(f"\n    every function with hostile arguments, 20 times each: {grew:.1f} MB above a built-in's "
          f"(the built-in's peak: {control / 1024:.0f} MB)")
    assert grew < LIMIT_MB
