"""Edify writing (dfota.formats.edify) and the device's grammar (dfota.formats.edify_parse)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dfota.core.errors import DfotaError
from dfota.formats.edify import call, mode, quote
from dfota.formats.edify_parse import (
    DEVICE_FUNCTIONS,
    And,
    Call,
    Concat,
    EdifySyntaxError,
    Eq,
    If,
    Literal,
    Ne,
    Node,
    Not,
    Or,
    Seq,
    calls,
    children,
    parse,
    source,
)

FUNCS = frozenset({"f", "g", "assert", "abort", "delete", "symlink", "apply_patch_check"})


def p(script: bytes | str, functions: frozenset[str] = FUNCS) -> Node:
    return parse(script.encode() if isinstance(script, str) else script, functions)


def lit(value: str | bytes) -> Literal:
    return Literal(value.encode() if isinstance(value, str) else value)


def syntax_error(script: bytes | str, functions: frozenset[str] = FUNCS) -> EdifySyntaxError:
    with pytest.raises(EdifySyntaxError) as caught:
        p(script, functions)
    return caught.value


# --- quote / mode / call -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/system/bin/app", '"/system/bin/app"'),
        ("", '""'),
        ('a"b', r'"a\"b"'),
        ("a\\b", r'"a\\b"'),
        ("a\nb", r'"a\nb"'),
        ("a\tb", r'"a\tb"'),
        ("a\rb", r'"a\x0db"'),
        ("\x01\x1f\x7f", r'"\x01\x1f\x7f"'),
        ("caf\u00e9 \u65e5", '"caf\u00e9 \u65e5"'),
        ("-rf", '"-rf"'),
    ],
)
def test_quote(value: str, expected: str) -> None:
    assert quote(value) == expected


def test_quote_refuses_nul() -> None:
    with pytest.raises(DfotaError, match="NUL"):
        quote("a\0b")


def test_quote_refuses_text_that_is_not_utf8() -> None:
    name = b"bad\xff".decode("utf-8", "surrogateescape")
    with pytest.raises(DfotaError, match="UTF-8"):
        quote(name)


@given(st.text(st.characters(codec="utf-8", exclude_characters="\0")))
@settings(max_examples=300, deadline=None, derandomize=True, database=None)
def test_a_quoted_text_parses_back_as_its_utf8_bytes(value: str) -> None:
    # a plain text is quoted as it is, any other escaped; the lexer reads both back
    assert p(f"f({quote(value)}, {quote(value + chr(34))})") == \
        Call("f", (lit(value), lit(value + chr(34))))


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0o755, "0755"), (0o4755, "04755"), (0o644, "0644"), (0o7, "07"), (0, "0")],
)
def test_mode(value: int, expected: str) -> None:
    assert mode(value) == expected


def test_mode_refuses_negative() -> None:
    with pytest.raises(ValueError, match="negative"):
        mode(-1)


@given(st.integers(min_value=0, max_value=0o7777))
@settings(max_examples=200, deadline=None, derandomize=True, database=None)
def test_mode_parses_back_as_a_bare_octal_word(value: int) -> None:
    script = f'set_perm(0, 0, {mode(value)}, "/system/x");\n'.encode()
    tree = parse(script, DEVICE_FUNCTIONS)
    assert isinstance(tree, Call)
    word = tree.args[2]
    assert isinstance(word, Literal)
    assert source(script, word) == word.value  # unquoted in the script
    assert word.value.startswith(b"0")
    assert int(word.value, 8) == value


def test_call() -> None:
    assert call("delete", quote("/a"), quote("/b")) == 'delete("/a", "/b")'
    assert call("unmount") == "unmount()"
    with pytest.raises(ValueError, match="function name"):
        call("abort(", '"x"')


# --- strings -------------------------------------------------------------------------------


def test_recognised_escapes() -> None:
    assert p(r'"\n\t\"\\\x41\x7e\x0D"') == lit(b'\n\t"\\A~\r')


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (r'"\q"', b"\\q"),
        (r'"\a\r\0"', b"\\a\\r\\0"),
        (r'"\x4"', b"\\x4"),
        (r'"\x4g"', b"\\x4g"),
        (r'"\xZZ"', b"\\xZZ"),
        (r'"\x"', b"\\x"),
        (r'"\x414"', b"A4"),
        ('"\\\n"', b"\\\n"),
    ],
)
def test_other_backslash_sequences_stay_literal(text: str, value: bytes) -> None:
    assert p(text) == lit(value)


def test_raw_newlines_inside_strings_and_line_numbers() -> None:
    assert p('"a\nb"') == lit("a\nb")
    error = syntax_error('f("a\nb\nc") -')
    assert error.line == 3


def test_escaped_nul_truncates_the_string() -> None:
    assert p(r'"ab\x00cd"') == lit("ab")
    assert p(r'f("ab\x00cd", "x")') == Call("f", (lit("ab"), lit("x")))


def test_raw_nul_ends_the_script() -> None:
    assert p(b"f(a);\0 garbage -(") == Call("f", (lit("a"),))
    assert syntax_error(b'f("a\0b")').reason.startswith("unexpected")


def test_carriage_return_inside_a_string_is_kept() -> None:
    assert p('"a\r\nb"') == lit("a\r\nb")


def test_non_utf8_bytes_round_trip() -> None:
    node = p(b'"\xff\xfe"')
    assert node == lit(b"\xff\xfe")
    assert isinstance(node, Literal)
    assert node.text.encode("utf-8", "surrogateescape") == b"\xff\xfe"
    assert lit("caf\u00e9").text == "caf\u00e9"


def test_unterminated_string_fails() -> None:
    error = syntax_error('f(a);\nf("abc')
    assert "unterminated" in str(error)
    assert error.line == 2
    syntax_error('"abc')


def test_unterminated_string_after_a_complete_script_ends_it() -> None:
    # The device's lexer stops at the end of input inside the string without a token.
    assert p('f(a);\n"abc') == Call("f", (lit("a"),))


# --- words, whitespace, comments -----------------------------------------------------------


def test_bare_words() -> None:
    assert p("MTD:boot:1234:ab12/x_y.Z") == lit("MTD:boot:1234:ab12/x_y.Z")
    assert p("f(0755, /system/bin)") == Call("f", (lit("0755"), lit("/system/bin")))


@pytest.mark.parametrize("script", ["-", "a-b", "f(a, -)", "a\x0bb", "a\x0c", "caf\u00e9", "a = b"])
def test_other_bytes_outside_strings_fail(script: str) -> None:
    assert "unexpected byte" in syntax_error(script).reason


def test_whitespace_is_space_tab_newline() -> None:
    assert p(" \t\nf(\ta ,\n b )\n\n") == Call("f", (lit("a"), lit("b")))


def test_carriage_return_outside_a_string_fails() -> None:
    error = syntax_error("f(a);\r\nf(b);\r\n")
    assert error.line == 1
    assert "carriage return" in str(error)
    assert syntax_error("f(a);\nf(b)\r").line == 2


def test_comments() -> None:
    assert p("# head\nf(a); # tail\n# last\n") == Call("f", (lit("a"),))
    assert p("f(a)#c\n") == Call("f", (lit("a"),))
    assert p('f("#not a comment")\n') == Call("f", (lit("#not a comment"),))


def test_comment_may_hold_a_carriage_return() -> None:
    # `#.*\n` in the device's lexer: `.` is any byte but a newline.
    assert p("# made on Windows\r\nf(a);\n") == Call("f", (lit("a"),))


def test_final_comment_without_newline_fails() -> None:
    error = syntax_error("f(a);\n# the end")
    assert "comment" in str(error)
    assert error.line == 2


@pytest.mark.parametrize("script", ["", "\n", " \t\n", "# only a comment\n", "\n# a\n\n# b\n"])
def test_empty_script_fails(script: str) -> None:
    assert syntax_error(script).reason == "empty script"


# --- operators and precedence --------------------------------------------------------------


def test_sequence_and_trailing_semicolons() -> None:
    a, b, c = lit("a"), lit("b"), lit("c")
    assert p("a; b; c") == Seq((a, b, c))
    assert p("a; b; c;\n") == Seq((a, b, c))
    assert p("a;") == a
    assert p("a;;;") == a
    assert p("(a; b); c") == Seq((Seq((a, b)), c))
    syntax_error("; a")
    syntax_error("a b")


def test_precedence_from_lowest_to_highest() -> None:
    a, b, c, d, e, f = (lit(x) for x in "abcdef")
    assert p("a; b || c && d == e + !f") == Seq((a, Or(b, And(c, Eq(d, Concat(e, Not(f)))))))
    assert p("!a + b != c && d || e; f") == Seq((Or(And(Ne(Concat(Not(a), b), c), d), e), f))
    assert p("a || b && c") == Or(a, And(b, c))
    assert p("a && b || c") == Or(And(a, b), c)
    assert p("a == b + c") == Eq(a, Concat(b, c))
    assert p("a + b == c") == Eq(Concat(a, b), c)
    assert p("! a == b") == Eq(Not(a), b)
    assert p("!!a") == Not(Not(a))


def test_binary_operators_are_left_associative() -> None:
    a, b, c = lit("a"), lit("b"), lit("c")
    assert p("a + b + c") == Concat(Concat(a, b), c)
    assert p("a || b || c") == Or(Or(a, b), c)
    assert p("a && b && c") == And(And(a, b), c)
    assert p("a == b != c") == Ne(Eq(a, b), c)


def test_parentheses_override_precedence() -> None:
    a, b, c = lit("a"), lit("b"), lit("c")
    assert p("(a || b) && c") == And(Or(a, b), c)
    assert p("a + (b == c)") == Concat(a, Eq(b, c))
    assert p("!(a + b)") == Not(Concat(a, b))
    syntax_error("(a")
    syntax_error("a)")


def test_semicolon_ends_an_expression_that_an_operator_may_continue() -> None:
    # `expr ;` is an expression of the grammar.
    a, b, c = lit("a"), lit("b"), lit("c")
    assert p("a || b; && c") == And(Or(a, b), c)


@pytest.mark.parametrize("script", ["a = b", "a & b", "a | b", "a === b", "a !== b", "a +", "&& a"])
def test_malformed_operators_fail(script: str) -> None:
    syntax_error(script)


def test_if_then_else() -> None:
    a, b, c = lit("a"), lit("b"), lit("c")
    assert p("if a then b endif") == If(a, b, None)
    assert p("if a then b else c endif") == If(a, b, c)
    assert p("if(a) then b; c else f() endif + a") == Concat(If(a, Seq((b, c)), Call("f", ())), a)
    assert p("if a then if b then c endif endif") == If(a, If(b, c, None), None)
    for bad in ["if a then b", "if a b endif", "if a then endif", "then", "a endif", "else"]:
        syntax_error(bad)


def test_keywords_are_whole_words_only() -> None:
    assert p("iff") == lit("iff")
    assert p("endif.") == lit("endif.")
    assert p('"if"') == lit("if")
    syntax_error("endif")


# --- function calls ------------------------------------------------------------------------


def test_calls() -> None:
    assert p("f()") == Call("f", ())
    assert p("f(a, g(b), c + a)") == Call(
        "f", (lit("a"), Call("g", (lit("b"),)), Concat(lit("c"), lit("a")))
    )
    assert p("f (a)") == Call("f", (lit("a"),))
    assert p("f(a; b, c)") == Call("f", (Seq((lit("a"), lit("b"))), lit("c")))


def test_assert_is_a_function_call() -> None:
    assert p('assert(f(a) || abort("E1: no"))') == Call(
        "assert", (Or(Call("f", (lit("a"),)), Call("abort", (lit("E1: no"),))),)
    )
    assert "unknown function 'assert'" in syntax_error("assert(a)", frozenset({"f"})).reason


def test_a_quoted_string_before_a_parenthesis_names_a_function() -> None:
    assert p('"f"("x")') == Call("f", (lit("x"),))


def test_argument_list_may_start_with_one_comma() -> None:
    assert p("f(, a)") == Call("f", (lit("a"),))


@pytest.mark.parametrize("script", ["f(a,)", "f(,)", "f(,,a)", "f(a b)", "f(a", "f(a)(b)"])
def test_malformed_argument_lists_fail(script: str) -> None:
    syntax_error(script)


def test_unknown_function_fails_the_whole_script() -> None:
    error = syntax_error("f(a);\nf(b);\nfoo(c);\nf(d);\n")
    assert error.line == 3
    assert "unknown function 'foo'" in str(error)
    assert p("foo(c)", frozenset({"foo"})) == Call("foo", (lit("c"),))
    syntax_error("sleep(1)", FUNCS)


def test_device_functions() -> None:
    expected = {
        "assert", "abort", "apply_patch_check", "apply_patch", "apply_patch_space",
        "package_extract_dir", "package_extract_file", "delete", "delete_recursive", "symlink",
        "set_perm", "set_perm_recursive", "set_metadata", "set_metadata_recursive", "rename",
        "ui_print", "show_progress", "set_progress", "write_raw_image", "mount", "unmount",
        "is_mounted", "getprop", "file_getprop", "read_file", "sha1_check", "run_program",
        "format", "greater_than_int", "less_than_int", "concat", "is_substring", "stdout",
        "ifelse", "sleep",
    }  # fmt: skip
    assert expected == DEVICE_FUNCTIONS
    for keyword in ("if", "then", "else", "endif"):
        assert keyword not in DEVICE_FUNCTIONS


# --- tree helpers, spans, errors -----------------------------------------------------------


def test_calls_walks_in_source_order() -> None:
    script = b'assert(apply_patch_check("/x", "1")); if f(a) then g(b) else delete(c) endif; !f(d)'
    assert [c.name for c in calls(parse(script, FUNCS))] == [
        "assert", "apply_patch_check", "f", "g", "delete", "f",
    ]  # fmt: skip


def test_spans_give_the_text_that_assert_reports() -> None:
    script = b'assert(apply_patch_check("/x", "1") || abort("E510: /x"));\n'
    tree = parse(script, FUNCS)
    assert isinstance(tree, Call)
    assert source(script, tree.args[0]) == b'apply_patch_check("/x", "1") || abort("E510: /x")'
    inner = next(c for c in calls(tree) if c.name == "abort")
    assert source(script, inner) == b'abort("E510: /x")'
    nested = b"f((a + b))"
    tree = parse(nested, FUNCS)
    assert isinstance(tree, Call)
    assert source(nested, tree.args[0]) == b"(a + b)"


def test_spans_do_not_take_part_in_equality() -> None:
    assert Literal(b"a", span=(0, 1)) == Literal(b"a", span=(5, 6))
    assert Literal(b"a") != Literal(b"b")
    assert And(lit("a"), lit("b")) != Or(lit("a"), lit("b"))


def test_syntax_error_is_a_user_facing_error() -> None:
    error = syntax_error("f(a);\n\n  )")
    assert isinstance(error, DfotaError)
    assert error.line == 3
    assert str(error).startswith("updater-script line 3: ")
    assert "\n" not in str(error)


def test_deep_nesting_is_a_syntax_error_not_a_crash() -> None:
    deep = "(" * 5000 + "a" + ")" * 5000
    assert "nested" in syntax_error(deep).reason


def test_long_scripts_stay_flat() -> None:
    script = "".join(f'f("/system/file{i}");\n' for i in range(5000)).encode()
    tree = parse(script, FUNCS)
    assert isinstance(tree, Seq)
    assert len(tree.items) == 5000
    assert len(children(tree)) == 5000
    assert sum(1 for _ in calls(tree)) == 5000
    assert tree == parse(script, FUNCS)


# --- quoting round trip through the device grammar -----------------------------------------

_NASTY = st.sampled_from(list("\"\\\n\r\t\x01\x1b\x7f -#;(),$`'/x\u00e9\u65e5\U0001f600"))
_CHARS = st.characters(blacklist_categories=["Cs"], blacklist_characters="\0")
_NAMES = st.one_of(
    st.text(alphabet=st.one_of(_NASTY, _CHARS)),
    st.sampled_from(['"); abort("x', "\\", '\\"', "-rf", "a\\x41", "\\n", "if", "# c", "\r\n"]),
)


@given(_NAMES)
@settings(max_examples=300, deadline=None, derandomize=True, database=None)
def test_quoted_names_parse_back_exactly(name: str) -> None:
    q = quote(name)
    assert all(0x20 <= byte != 0x7F for byte in q.encode()), "control bytes are escaped"
    script = (
        f"assert({call('apply_patch_check', q, quote('abc'))});\n"
        f"{call('delete', q, quote('/system/x'))};\n"
        f"{call('symlink', quote('t'), q)};\n"
    ).encode()
    tree = parse(script, DEVICE_FUNCTIONS)
    raw = name.encode("utf-8")
    assert tree == Seq(
        (
            Call("assert", (Call("apply_patch_check", (Literal(raw), Literal(b"abc"))),)),
            Call("delete", (Literal(raw), Literal(b"/system/x"))),
            Call("symlink", (Literal(b"t"), Literal(raw))),
        )
    )
    found = list(calls(tree))
    assert [c.name for c in found] == ["assert", "apply_patch_check", "delete", "symlink"]
    for node in (found[1].args[0], found[2].args[0], found[3].args[1]):
        assert isinstance(node, Literal)
        assert node.value == raw
        assert node.text == name
