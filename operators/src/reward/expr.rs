//! Symbolic equivalence of simple expressions: both sides are translated from LaTeX or plain
//! math into `evalexpr`'s syntax and evaluated at the same pseudo-random points. Two polynomials
//! or radical expressions that differ as functions differ at almost every point, so a handful of
//! points decides `x^2+2x+1` = `(x+1)^2` without a computer algebra system (none of the Rust CAS
//! crates is both maintained and light to build).

use std::collections::BTreeSet;

use super::MAX_NESTING;

use evalexpr::{
    ContextWithMutableVariables, DefaultNumericTypes, HashMapContext, Node, Value,
    build_operator_tree,
};

/// An expression ready to evaluate, with the variables it uses.
pub(super) struct Expr {
    tree: Node<DefaultNumericTypes>,
    vars: BTreeSet<String>,
}

/// Longest answer read as math, in bytes: far above any real answer (MATH's longest are a few
/// hundred bytes), and it bounds the work of a comparison, which evaluates both sides at six
/// points. A longer answer is not math (it still compares as text).
pub(super) const MAX_LEN: usize = 4096;

/// Most operators and parentheses in a translated expression. evalexpr builds, evaluates and drops
/// its tree recursively, one level per operator in the worst case (`1+1+...+1` nests each `+` in
/// the next): the count bounds the tree's depth, so a long answer cannot overflow the stack there.
pub(super) const MAX_NODES: usize = 128;

/// Points tried per comparison; each variable draws a value in [0.5, 3.5) at each point, away
/// from 0 and 1 (where `x^2` = `x`) and positive (so `\sqrt{x}` and `\ln x` are defined).
const POINTS: usize = 6;

/// Relative tolerance of every evaluated comparison: far below any rounding a response would
/// state (`0.33` ≠ `1/3`), far above the error of a few floating-point operations.
pub(super) const RELATIVE_TOLERANCE: f64 = 1e-6;

/// Whether two values agree within [`RELATIVE_TOLERANCE`].
pub(super) fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= RELATIVE_TOLERANCE * a.abs().max(b.abs()).max(1e-9)
}

impl Expr {
    /// Parses an answer as math, or None when it is not one: a word of more than three letters
    /// (`Paris`) or a word standing alone (`it is 5`), commas, intervals, `\pm`, relations, or
    /// anything the translator does not know. Letters alone (`abc`) are more likely a word too.
    /// So is an answer longer than [`MAX_LEN`], nested deeper than [`MAX_NESTING`], or with more
    /// than [`MAX_NODES`] operators and parentheses.
    pub(super) fn parse(s: &str) -> Option<Expr> {
        let s = s.trim();
        if s.len() > MAX_LEN
            || s.is_empty()
            || !s
                .chars()
                .any(|c| c.is_ascii_digit() || "+-*/^\\(){}".contains(c))
        {
            return None;
        }
        // "it is H2O": a word standing alone makes it a sentence, not a product of variables.
        if s.split_whitespace()
            .any(|w| w.len() >= 2 && w.chars().all(|c| c.is_ascii_alphabetic()))
        {
            return None;
        }
        let mut t = Translator {
            out: String::new(),
            vars: BTreeSet::new(),
            operand_end: false,
            depth: 0,
        };
        t.expr(s)?;
        let nodes = t.out.bytes().filter(|b| b"+-*/^(".contains(b)).count();
        if nodes > MAX_NODES {
            return None;
        }
        let tree = build_operator_tree::<DefaultNumericTypes>(&t.out).ok()?;
        Some(Expr { tree, vars: t.vars })
    }

    /// The value of an expression without variables (`2\sqrt{2}`, `\frac{\pi}{4}`).
    pub(super) fn constant(&self) -> Option<f64> {
        if !self.vars.is_empty() {
            return None;
        }
        self.eval(&HashMapContext::new())
    }

    fn eval(&self, ctx: &HashMapContext) -> Option<f64> {
        let v = self.tree.eval_number_with_context(ctx).ok()?;
        v.is_finite().then_some(v)
    }

    /// Whether two expressions agree at every point where both are defined (and are defined at
    /// the same points), with at least half the points defined.
    pub(super) fn equivalent(&self, other: &Expr) -> bool {
        let vars: BTreeSet<&String> = self.vars.iter().chain(&other.vars).collect();
        // xorshift with a fixed seed: the same pair always gets the same score.
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            0.5 + 3.0 * (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let points = if vars.is_empty() { 1 } else { POINTS };
        let mut defined = 0;
        for _ in 0..points {
            let mut ctx = HashMapContext::<DefaultNumericTypes>::new();
            for v in &vars {
                ctx.set_value((*v).clone(), Value::Float(next())).ok();
            }
            match (self.eval(&ctx), other.eval(&ctx)) {
                (Some(a), Some(b)) if close(a, b) => defined += 1,
                (None, None) => {}
                _ => return false,
            }
        }
        defined * 2 >= points.max(2)
    }
}

/// Translates LaTeX or plain math into `evalexpr` syntax: numbers as floats (evalexpr divides
/// integers as integers), explicit `*` where math writes none (`2x`, `2\sqrt{2}`, `(x+1)(x-1)`),
/// `\frac{a}{b}` as `((a)/(b))`, `\sqrt[n]{a}` as a power, `\pi` as its value, variables renamed
/// `v_x` (so no name clashes with evalexpr's own).
struct Translator {
    out: String,
    vars: BTreeSet<String>,
    /// The last thing written ends an operand, so an operand next to it multiplies.
    operand_end: bool,
    /// Calls of [`Translator::expr`] in progress: one per group, command argument or exponent
    /// being read, at most [`MAX_NESTING`].
    depth: usize,
}

const FUNCTIONS: &[(&str, &str)] = &[
    ("sin", "math::sin"),
    ("cos", "math::cos"),
    ("tan", "math::tan"),
    ("ln", "math::ln"),
    ("log", "math::log10"),
    ("exp", "math::exp"),
];

const GREEK: &[&str] = &[
    "alpha", "beta", "gamma", "theta", "phi", "lambda", "mu", "omega", "sigma", "tau",
];

impl Translator {
    /// Writes the start of an operand, with a `*` when it follows another.
    fn operand(&mut self, text: &str) {
        if self.operand_end {
            self.out.push('*');
        }
        self.out.push_str(text);
    }

    /// Translates `s`, one level of nesting deeper: None past [`MAX_NESTING`].
    fn expr(&mut self, s: &str) -> Option<()> {
        if self.depth >= MAX_NESTING {
            return None;
        }
        self.depth += 1;
        let done = self.sequence(s);
        self.depth -= 1;
        done
    }

    fn sequence(&mut self, s: &str) -> Option<()> {
        let mut rest = s;
        while let Some(c) = rest.chars().next() {
            let after = &rest[c.len_utf8()..];
            match c {
                c if c.is_whitespace() => rest = after,
                '0'..='9' | '.' => {
                    let end = rest
                        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                        .unwrap_or(rest.len());
                    let v: f64 = rest[..end].parse().ok()?;
                    self.operand(&format!("{v:?}"));
                    self.operand_end = true;
                    rest = &rest[end..];
                }
                'a'..='z' | 'A'..='Z' => {
                    let end = rest
                        .find(|c: char| !c.is_ascii_alphabetic())
                        .unwrap_or(rest.len());
                    let word = &rest[..end];
                    if word.len() > 3 {
                        return None;
                    }
                    // `xy` is x times y; letters compare case-insensitively like the text rules.
                    for ch in word.chars() {
                        let name = format!("v_{}", ch.to_ascii_lowercase());
                        self.operand(&name);
                        self.vars.insert(name);
                        self.operand_end = true;
                    }
                    rest = &rest[end..];
                }
                '+' | '-' | '*' | '/' | '^' => {
                    self.out.push(c);
                    self.operand_end = false;
                    rest = after;
                    if c == '^' {
                        rest = self.exponent(rest)?;
                    }
                }
                '(' | '{' => {
                    let close = if c == '(' { ')' } else { '}' };
                    let (body, tail) = group(after, c, close)?;
                    self.operand("(");
                    self.operand_end = false;
                    self.expr(body)?;
                    self.out.push(')');
                    self.operand_end = true;
                    rest = tail;
                }
                '\\' => rest = self.command(after)?,
                _ => return None,
            }
        }
        Some(())
    }

    /// After `^`: a braced or parenthesized group, else a whole number or one letter (`x^10` in
    /// plain text means the tenth power, whatever TeX would do with it).
    fn exponent<'a>(&mut self, s: &'a str) -> Option<&'a str> {
        let s = s.trim_start();
        let c = s.chars().next()?;
        if c == '{' || c == '(' {
            return Some(s);
        }
        let (sign, s) = match s.strip_prefix('-') {
            Some(rest) => ("-", rest),
            None => ("", s),
        };
        let end = if s.starts_with(|c: char| c.is_ascii_digit()) {
            s.find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(s.len())
        } else {
            s.chars().next()?.len_utf8()
        };
        self.out.push('(');
        self.out.push_str(sign);
        self.expr(&s[..end])?;
        self.out.push(')');
        self.operand_end = true;
        Some(&s[end..])
    }

    /// A LaTeX command (after its backslash); returns what follows it.
    fn command<'a>(&mut self, s: &'a str) -> Option<&'a str> {
        let end = s
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(s.len());
        let (name, rest) = s.split_at(end);
        match name {
            "frac" | "dfrac" | "tfrac" => {
                let (num, rest) = argument(rest)?;
                let (den, rest) = argument(rest)?;
                self.operand("((");
                self.operand_end = false;
                self.expr(num)?;
                self.out.push_str(")/(");
                self.operand_end = false;
                self.expr(den)?;
                self.out.push_str("))");
                self.operand_end = true;
                Some(rest)
            }
            "sqrt" => {
                let rest = rest.trim_start();
                let (index, rest) = match rest.strip_prefix('[') {
                    Some(r) => {
                        let close = r.find(']')?;
                        (Some(&r[..close]), &r[close + 1..])
                    }
                    None => (None, rest),
                };
                let (body, rest) = argument(rest)?;
                self.operand("math::sqrt(");
                if let Some(index) = index {
                    // The n-th root as a power: `(a)^(1/(n))`.
                    self.out.truncate(self.out.len() - "math::sqrt(".len());
                    self.out.push_str("((");
                    self.operand_end = false;
                    self.expr(body)?;
                    self.out.push_str(")^(1.0/(");
                    self.operand_end = false;
                    self.expr(index)?;
                    self.out.push_str(")))");
                } else {
                    self.operand_end = false;
                    self.expr(body)?;
                    self.out.push(')');
                }
                self.operand_end = true;
                Some(rest)
            }
            "pi" => {
                self.operand(&format!("{:?}", std::f64::consts::PI));
                self.operand_end = true;
                Some(rest)
            }
            "cdot" | "times" => {
                self.out.push('*');
                self.operand_end = false;
                Some(rest)
            }
            "div" => {
                self.out.push('/');
                self.operand_end = false;
                Some(rest)
            }
            "left" | "right" | "," | "!" | ";" => Some(rest),
            _ if GREEK.contains(&name) => {
                let var = format!("v_{name}");
                self.operand(&var);
                self.vars.insert(var);
                self.operand_end = true;
                Some(rest)
            }
            _ => {
                let (_, f) = FUNCTIONS.iter().find(|(n, _)| *n == name)?;
                let rest = rest.trim_start();
                // `\sin(x)`, `\sin{x}`, or `\sin x` (one operand).
                let (arg, rest) = match rest.strip_prefix('(') {
                    Some(inner) => group(inner, '(', ')')?,
                    None => argument(rest)?,
                };
                self.operand(&format!("{f}("));
                self.operand_end = false;
                self.expr(arg)?;
                self.out.push(')');
                self.operand_end = true;
                Some(rest)
            }
        }
    }
}

/// The body of a group whose opening bracket was just read, and what follows its close.
fn group(s: &str, open: char, close: char) -> Option<(&str, &str)> {
    let mut depth = 1;
    for (i, c) in s.char_indices() {
        if c == open {
            depth += 1;
        } else if c == close {
            depth -= 1;
            if depth == 0 {
                return Some((&s[..i], &s[i + c.len_utf8()..]));
            }
        }
    }
    None
}

/// A command's argument: `{..}`, or one character (`\frac12`), or one command (`\sqrt\pi`).
fn argument(s: &str) -> Option<(&str, &str)> {
    let s = s.trim_start();
    if let Some(body) = s.strip_prefix('{') {
        return group(body, '{', '}');
    }
    if let Some(cmd) = s.strip_prefix('\\') {
        let end = 1 + cmd
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(cmd.len());
        return Some(s.split_at(end));
    }
    let c = s.chars().next()?;
    Some(s.split_at(c.len_utf8()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same(a: &str, b: &str) -> bool {
        Expr::parse(a)
            .zip(Expr::parse(b))
            .is_some_and(|(a, b)| a.equivalent(&b))
    }

    #[test]
    fn equal_expressions_in_other_forms() {
        for (a, b) in [
            ("x^2+2x+1", "(x+1)^2"),
            ("2\\sqrt{2}", "\\sqrt{8}"),
            ("\\frac{\\sqrt{3}}{2}", "\\frac{1}{2}\\sqrt{3}"),
            ("\\frac{\\sqrt2}{2}", "\\frac{1}{\\sqrt{2}}"),
            ("\\pi r^2", "r^2\\pi"),
            ("(x-2)(x+3)", "x^2+x-6"),
            ("\\frac{4}{3}\\pi r^3", "\\frac{4\\pi r^3}{3}"),
            ("x+1", "\\frac{x^2-1}{x-1}"),
            ("\\sqrt[3]{27}", "3"),
            ("2^{-1}", "0.5"),
            ("a^2 - b^2", "(a-b)(a+b)"),
            ("2\\cdot 3", "6"),
        ] {
            assert!(same(a, b), "{a} = {b}");
        }
    }

    #[test]
    fn different_expressions_and_near_misses() {
        for (a, b) in [
            ("x^2+2x-1", "(x+1)^2"),
            ("4\\sqrt{2}", "\\sqrt{8}"),
            ("2x-3", "3-2x"),
            ("\\frac{x+1}{x-1}", "\\frac{x-1}{x+1}"),
            ("x^3", "x^2"),
            ("0.33", "\\frac{1}{3}"),
            ("-3", "3"),
            ("\\sqrt{5}", "\\sqrt{2}+\\sqrt{3}"),
        ] {
            assert!(!same(a, b), "{a} != {b}");
        }
    }

    #[test]
    fn words_and_unknown_notation_are_not_math() {
        for s in [
            "Paris",
            "abc",
            "it is 5",
            "(1,2)",
            "[2,5]",
            "2\\pm\\sqrt3",
            "x \\in A",
            "\\infty",
        ] {
            assert!(Expr::parse(s).is_none(), "{s}");
        }
        let c = Expr::parse("2\\sqrt{2}").unwrap().constant().unwrap();
        assert!(close(c, 8f64.sqrt()));
        assert!(Expr::parse("2x").unwrap().constant().is_none());
    }
}
