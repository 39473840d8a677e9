"""The edify grammar exactly as the module's updater reads it: a lexer and parser, no evaluation.

Follows the Qualcomm-LE recovery's `edify/lexer.ll` and `edify/parser.yy` (AOSP edify):
precedence from lowest to highest is `;`, `||`, `&&`, `==`/`!=`, `+`, then unary `!`; all binary
operators are left-associative. Quirks of that grammar that are kept on purpose:

- The updater hands the script to the lexer as a C string, so a NUL byte ends the script.
- An unterminated string ends the input without a token, so `a; "xyz` is accepted as `a;`.
- `expr ;` is itself an expression, so `;` may trail, repeat, or precede a binary operator.
- A `#` comment runs to the newline and may hold any byte but a newline, carriage returns too.
- `f(, a)` is `f(a)`: the argument list may start with one comma.
- A quoted string directly before `(` is a function name: `"ui_print"("x")` is a call.

Every node carries `span`, the byte offsets of its text in the script; `assert()` on the device
aborts with that text. Spans take no part in comparisons.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple, TypeAlias

from dfota.core.errors import DfotaError

DEVICE_FUNCTIONS: frozenset[str] = frozenset(
    {
        # edify builtins
        "abort", "assert", "concat", "greater_than_int", "ifelse", "is_substring",
        "less_than_int", "sleep", "stdout",
        # updater install functions
        "apply_patch", "apply_patch_check", "apply_patch_space", "delete", "delete_recursive",
        "file_getprop", "format", "getprop", "is_mounted", "mount", "package_extract_dir",
        "package_extract_file", "read_file", "rename", "run_program", "set_metadata",
        "set_metadata_recursive", "set_perm", "set_perm_recursive", "set_progress", "sha1_check",
        "show_progress", "symlink", "ui_print", "unmount", "write_raw_image",
    }
)  # fmt: skip


@dataclass(frozen=True)
class _Node:
    # byte offsets of the node's text in the script
    span: tuple[int, int] = field(default=(0, 0), compare=False, repr=False, kw_only=True)


@dataclass(frozen=True)
class Literal(_Node):
    """A string, quoted or a bare word; `value` holds the bytes the device sees."""

    value: bytes

    @property
    def text(self) -> str:
        """The value as text; bytes that are not UTF-8 come back as surrogate escapes."""
        return self.value.decode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class Call(_Node):
    name: str
    args: tuple[Node, ...]


@dataclass(frozen=True)
class Seq(_Node):
    """`a; b; c`: evaluates each in turn; the value is the last one's."""

    items: tuple[Node, ...]


@dataclass(frozen=True)
class Not(_Node):
    operand: Node


@dataclass(frozen=True)
class If(_Node):
    cond: Node
    then: Node
    orelse: Node | None


@dataclass(frozen=True)
class _Binary(_Node):
    left: Node
    right: Node


@dataclass(frozen=True)
class And(_Binary):
    pass


@dataclass(frozen=True)
class Or(_Binary):
    pass


@dataclass(frozen=True)
class Eq(_Binary):
    pass


@dataclass(frozen=True)
class Ne(_Binary):
    pass


@dataclass(frozen=True)
class Concat(_Binary):
    """`a + b`: the two strings joined."""


Node: TypeAlias = Literal | Call | Seq | Not | If | And | Or | Eq | Ne | Concat


class EdifySyntaxError(DfotaError):
    """The script does not parse; the device's updater would exit with code 6."""

    def __init__(self, line: int, message: str) -> None:
        self.line = line
        self.reason = message
        super().__init__(f"updater-script line {line}: {message}")


_WORD = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_:/.")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_KEYWORDS = {b"if": "if", b"then": "then", b"else": "else", b"endif": "endif"}
_ESCAPES = {ord("n"): ord("\n"), ord("t"): ord("\t"), ord('"'): ord('"'), ord("\\"): ord("\\")}
_PUNCT = {b"&&": "&&", b"||": "||", b"==": "==", b"!=": "!="}
_SINGLE = frozenset(b"+(),!;")
_STARTS = frozenset({"string", "(", "!", "if"})  # tokens that can begin an expression
_PREC = {";": 1, "||": 2, "&&": 3, "==": 4, "!=": 4, "+": 5}
_BINARY: dict[str, type[Or | And | Eq | Ne | Concat]] = {
    "||": Or, "&&": And, "==": Eq, "!=": Ne, "+": Concat}


class _Token(NamedTuple):  # a tuple: a script has thousands
    kind: str  # "string", "eof", a keyword, or the operator's text
    line: int
    start: int
    end: int
    value: bytes = b""


def _describe_byte(byte: int) -> str:
    if byte == 0x0D:
        return "carriage return outside a string (CRLF line endings?)"
    return f"unexpected byte {bytes([byte])!r} outside a string"


def _string(script: bytes, pos: int, line: int) -> tuple[bytes, int, int] | None:
    """The string opening at `pos` as (value, end, line); None when it is never closed."""
    close = script.find(b'"', pos + 1)
    if close >= 0 and script.find(b"\\", pos + 1, close) < 0:  # no escape: the bytes as they are
        value = script[pos + 1 : close]
        return value.split(b"\0", 1)[0], close + 1, line + value.count(b"\n")
    out = bytearray()
    i = pos + 1
    size = len(script)
    while i < size:
        byte = script[i]
        if byte == 0x22:
            # The device copies the value with strdup: it ends at the first NUL.
            return bytes(out).split(b"\0", 1)[0], i + 1, line
        if byte == 0x5C and i + 1 < size:
            nxt = script[i + 1]
            if nxt in _ESCAPES:
                out.append(_ESCAPES[nxt])
                i += 2
                continue
            if nxt == 0x78 and i + 3 < size and script[i + 2] in _HEX and script[i + 3] in _HEX:
                out.append(int(script[i + 2 : i + 4], 16))
                i += 4
                continue
        if byte == 0x0A:
            line += 1
        out.append(byte)
        i += 1
    return None


class _Lexer:
    """The script's tokens, as the device's lexer reads them: each token kind is read by the
    method its first byte selects (`_LEXERS`)."""

    def __init__(self, script: bytes) -> None:
        self.script, self.size = script, len(script)
        self.line, self.pos = 1, 0
        self.tokens: list[_Token] = []
        self.ended = False  # by a string never closed

    def read(self) -> list[_Token]:
        while self.pos < self.size and not self.ended:
            byte = self.script[self.pos]
            _LEXERS.get(byte, _Lexer.unexpected)(self, byte)
        if not self.ended:
            self.tokens.append(_Token("eof", self.line, self.size, self.size))
        return self.tokens

    def blank(self, _byte: int) -> None:
        self.pos += 1

    def newline(self, _byte: int) -> None:
        self.line += 1
        self.pos += 1

    def comment(self, _byte: int) -> None:
        newline = self.script.find(b"\n", self.pos)
        if newline < 0:
            raise EdifySyntaxError(self.line, "the last comment has no newline at its end")
        self.line += 1
        self.pos = newline + 1

    def string(self, _byte: int) -> None:
        i, line = self.pos, self.line
        lexed = _string(self.script, i, line)
        if lexed is None:
            # The device's lexer reaches the end of input inside the string and stops.
            self.tokens.append(_Token("eof", line, i, self.size, b'"'))
            self.ended = True
            return
        value, end, end_line = lexed
        self.tokens.append(_Token("string", line, i, end, value))
        self.line, self.pos = end_line, end

    def word(self, _byte: int) -> None:
        i = end = self.pos
        while end < self.size and self.script[end] in _WORD:
            end += 1
        word = self.script[i:end]
        self.tokens.append(_Token(_KEYWORDS.get(word, "string"), self.line, i, end, word))
        self.pos = end

    def operator(self, byte: int) -> None:
        i = self.pos
        pair = self.script[i : i + 2]
        if pair in _PUNCT:
            self.tokens.append(_Token(_PUNCT[pair], self.line, i, i + 2))
            self.pos += 2
        elif byte in _SINGLE:
            self.tokens.append(_Token(chr(byte), self.line, i, i + 1))
            self.pos += 1
        else:
            self.unexpected(byte)

    def unexpected(self, byte: int) -> None:
        raise EdifySyntaxError(self.line, _describe_byte(byte))


# the first byte of a token -> what reads it
_LEXERS: dict[int, Callable[[_Lexer, int], None]] = {
    0x20: _Lexer.blank, 0x09: _Lexer.blank, 0x0A: _Lexer.newline, 0x23: _Lexer.comment,
    0x22: _Lexer.string, **dict.fromkeys(_WORD, _Lexer.word),
    **dict.fromkeys(_SINGLE | {p[0] for p in _PUNCT}, _Lexer.operator),
}


def _tokens(script: bytes) -> list[_Token]:
    return _Lexer(script).read()


def _show(token: _Token) -> str:
    if token.kind == "eof":
        if token.value == b'"':
            return "unterminated string"
        return "end of script"
    if token.kind == "string":
        text = token.value if len(token.value) <= 40 else token.value[:40] + b"..."
        return f"string {text!r}"
    return repr(token.kind)


class _Parser:
    def __init__(self, tokens: list[_Token], functions: Collection[str]) -> None:
        self.tokens = tokens
        self.functions = functions
        self.pos = 0

    def peek(self) -> _Token:
        return self.tokens[self.pos]

    def advance(self) -> _Token:
        token = self.tokens[self.pos]
        if token.kind != "eof":
            self.pos += 1
        return token

    def expect(self, kind: str, context: str) -> _Token:
        token = self.advance()
        if token.kind != kind:
            raise EdifySyntaxError(token.line, f"expected {kind!r} {context}, got {_show(token)}")
        return token

    def expression(self, min_prec: int) -> Node:
        left = self.prefix()
        seq: list[Node] | None = None
        # After `expr ;` the grammar's location of `left` ends at that `;`; a further `;`
        # makes this location the node's span.
        semicolon_end: int | None = None
        while True:
            kind = self.peek().kind
            prec = _PREC.get(kind)
            if prec is None or prec < min_prec:
                break
            token = self.advance()
            if kind == ";" and self.peek().kind in _STARTS:
                if seq is None:
                    seq = [left]
                seq.append(self.expression(prec + 1))
                semicolon_end = None
                continue
            if seq is not None:
                left, seq = _sequence(seq), None
            if kind == ";":  # `expr ;` is the expression itself
                if semicolon_end is not None:
                    left = dataclasses.replace(left, span=(left.span[0], semicolon_end))
                semicolon_end = token.end
                continue
            right = self.expression(prec + 1)
            left = _BINARY[kind](left, right, span=(left.span[0], right.span[1]))
            semicolon_end = None
        return left if seq is None else _sequence(seq)

    def prefix(self) -> Node:
        token = self.advance()
        if token.kind == "string":
            if self.peek().kind == "(":
                return self.call(token)
            return Literal(token.value, span=(token.start, token.end))
        if token.kind == "(":
            inner = self.expression(1)
            close = self.expect(")", "to close '('")
            return dataclasses.replace(inner, span=(token.start, close.end))
        if token.kind == "!":
            operand = self.prefix()
            return Not(operand, span=(token.start, operand.span[1]))
        if token.kind == "if":
            cond = self.expression(1)
            self.expect("then", "after the condition of 'if'")
            then = self.expression(1)
            orelse = None
            if self.peek().kind == "else":
                self.advance()
                orelse = self.expression(1)
            end = self.expect("endif", "to close 'if'")
            return If(cond, then, orelse, span=(token.start, end.end))
        raise EdifySyntaxError(token.line, f"unexpected {_show(token)}")

    def call(self, name_token: _Token) -> Call:
        self.advance()
        args: list[Node] = []
        if self.peek().kind != ")":
            if self.peek().kind != ",":  # the grammar lets the list start with one comma
                args.append(self.expression(1))
            while self.peek().kind == ",":
                self.advance()
                args.append(self.expression(1))
        close = self.expect(")", "after the arguments")
        name = name_token.value.decode("utf-8", "surrogateescape")
        if name not in self.functions:
            raise EdifySyntaxError(name_token.line, f"unknown function {name!r}")
        return Call(name, tuple(args), span=(name_token.start, close.end))


def _sequence(items: list[Node]) -> Seq:
    return Seq(tuple(items), span=(items[0].span[0], items[-1].span[1]))


def parse(script: bytes, functions: Collection[str]) -> Node:
    """Parse a whole script as the device does; raise EdifySyntaxError where it would fail."""
    script = bytes(script).split(b"\0", 1)[0]
    tokens = _tokens(script)
    if tokens[0].kind == "eof":
        raise EdifySyntaxError(tokens[0].line, "empty script")
    parser = _Parser(tokens, functions)
    try:
        root = parser.expression(1)
    except RecursionError:
        raise EdifySyntaxError(parser.peek().line, "expressions nested too deeply") from None
    end = parser.peek()
    if end.kind != "eof":
        raise EdifySyntaxError(end.line, f"unexpected {_show(end)}")
    return root


def source(script: bytes, node: Node) -> bytes:
    """The text of `node` in `script`, as the device's `assert()` quotes it."""
    return bytes(script)[node.span[0] : node.span[1]]


def children(node: Node) -> tuple[Node, ...]:
    """The direct sub-expressions of `node`, in source order."""
    if isinstance(node, Call):
        return node.args
    if isinstance(node, Seq):
        return node.items
    if isinstance(node, Not):
        return (node.operand,)
    if isinstance(node, If):
        branches = (node.then,) if node.orelse is None else (node.then, node.orelse)
        return (node.cond, *branches)
    if isinstance(node, Literal):
        return ()
    return (node.left, node.right)


def calls(node: Node) -> Iterator[Call]:
    """Every function call in the tree, in source order (a call before its arguments)."""
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, Call):
            yield current
        stack.extend(reversed(children(current)))
