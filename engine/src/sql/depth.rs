//! How deeply a statement nests, measured on its tokens before the parser builds anything.
//!
//! DataFusion plans and optimizes expressions and queries recursively, and the time it
//! takes grows faster than the depth (a 2,000-term `1 + 1 + ...` took seconds and overflowed
//! a thread's stack). sqlparser's recursion limit does not help: it counts brackets and
//! sub-expressions, but builds chains of left-associative operators (`a OR b OR c ...`) in a
//! loop, so a chain of any length passes it, and even dropping a tree 30,000 levels deep
//! overflows a 2 MiB stack. So the depth is bounded before parsing: one pass over the
//! tokens with an explicit stack of open brackets computes an upper bound of the depth of
//! any tree the parser could build from them, and the statement is refused when the bound
//! passes [`MAX_DEPTH`]. (User SQL is parsed only here, with sqlparser: DataFusion's own
//! parser and its `sql_parser.recursion_limit` never see it.)
//!
//! What adds a level:
//!
//! - every operator, keyword or other token that is not a literal, an identifier, `.`,
//!   `TRUE`, `FALSE` or `NULL` (each can wrap what is before or after it);
//! - every bracket pair (`(...)`, `[...]`, `{...}`) and `CASE ... END`;
//! - every `SELECT`, `JOIN`, `UNION` / `INTERSECT` / `EXCEPT`, `OVER` and each comma of a
//!   `FROM` list, wherever they are in the statement: each is a level of the query plan
//!   (subqueries and joins become joins, windows become window operators).
//!
//! Commas (and `WHEN` / `THEN` / `ELSE` inside `CASE`) separate siblings, so a list of any
//! length adds nothing; `OR` and `AND` split a chain into operands that are siblings too, so
//! `a = 1 OR a = 2 OR ...` is one level per `OR`. The bound is never below the depth of the
//! syntax tree, and for chains of one operator it is the depth.

use crate::error::Location;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan};

/// The deepest a statement may nest (see the module documentation for what counts). At
/// this depth the slowest shape found (`SELECT 1 + 1 + ...`, 498 terms) plans and runs in
/// about 0.25 s in a release build and 1.3 s in a debug build (2,000 terms: 3.4 s release);
/// 495 `OR`s in 50 ms (`adhoc::tests::planning_time_at_the_depth_limit` measures it). Ordinary SQL, `IN` lists and `CASE`s of any length stay far below.
pub const MAX_DEPTH: usize = 500;

/// The stack a thread needs to parse, plan and run the deepest statement accepted
/// ([`MAX_DEPTH`]); DataFusion's planner recurses once or more per level. Threads that
/// apply statements or run queries (tokio's worker and blocking threads, the thread that
/// loads SQL files) must have at least this much: `weir` gives them this. Measured need at
/// the limit: about 16 MiB in a debug build, 2 MiB in a release build (tokio's default,
/// too tight); only the pages a thread touches are allocated.
pub const STACK_SIZE: usize = 64 << 20;

/// How deeply sqlparser may recurse: brackets, subqueries and functions within functions.
/// sqlparser's own default.
pub const PARSER_RECURSION_LIMIT: usize = 50;

/// A statement that nests deeper than allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooDeep {
    /// Where the bound first passed the limit.
    pub at: Location,
    pub limit: usize,
}

impl TooDeep {
    pub fn message(&self) -> String {
        format!(
            "the statement nests too deeply: more than {} levels at line {}, column {} (each \
             operator, bracket, function call or subquery adds a level; a chain of OR adds \
             one per OR); the limit is {} levels (expression depth): split it, or write long \
             OR chains as IN (...)",
            self.limit, self.at.line, self.at.column, self.limit
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Statement,
    Paren,
    Bracket,
    Brace,
    Case,
}

/// A run of tokens between separators: its depth is the number of `OR`s, plus the deepest
/// operand of the `OR`s, which is the number of its `AND`s plus its deepest operand, which
/// counts every token and the deepest bracket inside it.
#[derive(Debug, Default, Clone, Copy)]
struct Segment {
    ors: usize,
    deepest_or_operand: usize,
    ands: usize,
    deepest_and_operand: usize,
    tokens: usize,
    deepest_child: usize,
}

impl Segment {
    fn and_operand(&self) -> usize {
        self.tokens + self.deepest_child
    }

    fn or_operand(&self) -> usize {
        self.ands + self.deepest_and_operand.max(self.and_operand())
    }

    fn depth(&self) -> usize {
        self.ors + self.deepest_or_operand.max(self.or_operand())
    }

    /// The levels above a bracket opened now.
    fn above_child(&self) -> usize {
        self.ors + self.ands + self.tokens
    }

    fn or(&mut self) {
        self.deepest_or_operand = self.deepest_or_operand.max(self.or_operand());
        self.ors += 1;
        self.ands = 0;
        self.deepest_and_operand = 0;
        self.tokens = 0;
        self.deepest_child = 0;
    }

    fn and(&mut self) {
        self.deepest_and_operand = self.deepest_and_operand.max(self.and_operand());
        self.ands += 1;
        self.tokens = 0;
        self.deepest_child = 0;
    }
}

/// An open bracket (or the statement itself).
#[derive(Debug, Clone, Copy)]
struct Frame {
    open: Open,
    /// Levels of the enclosing frames above this one.
    base: usize,
    /// The deepest finished segment.
    deepest: usize,
    segment: Segment,
    /// In a FROM list, where a comma is a join.
    from_list: bool,
}

impl Frame {
    fn new(open: Open, base: usize) -> Frame {
        Frame {
            open,
            base,
            deepest: 0,
            segment: Segment::default(),
            from_list: false,
        }
    }

    /// This frame's depth so far: its own level and its deepest segment.
    fn depth(&self) -> usize {
        1 + self.deepest.max(self.segment.depth())
    }

    fn separate(&mut self) {
        self.deepest = self.deepest.max(self.segment.depth());
        self.segment = Segment::default();
    }
}

/// Check each statement of a script (the tokens of a whole script, as the tokenizer gives
/// them): one result per statement that has any token, in order.
pub fn check_script(tokens: &[TokenWithSpan], limit: usize) -> Vec<Result<usize, TooDeep>> {
    let mut out = Vec::new();
    let mut rest = tokens;
    loop {
        while let Some((t, tail)) = rest.split_first() {
            if matches!(t.token, Token::SemiColon | Token::Whitespace(_)) {
                rest = tail;
            } else {
                break;
            }
        }
        if rest.is_empty() || rest[0].token == Token::EOF {
            return out;
        }
        let (result, used) = check_statement(rest, limit);
        out.push(result);
        rest = &rest[used..];
    }
}

/// The depth bound of the statement at the start of `tokens` (it ends at `;` or the end),
/// or where it passed `limit`; and how many tokens it took.
fn check_statement(tokens: &[TokenWithSpan], limit: usize) -> (Result<usize, TooDeep>, usize) {
    let mut stack = vec![Frame::new(Open::Statement, 0)];
    // Plan levels (queries, joins, set operations, windows), added to every path.
    let mut plan = 0usize;
    let mut used = 0usize;
    for t in tokens {
        if matches!(t.token, Token::SemiColon | Token::EOF) {
            break;
        }
        used += 1;
        step(&mut stack, &mut plan, &t.token);
        let Some(top) = stack.last() else { break };
        if plan + top.base + top.depth() > limit {
            let at = Location {
                line: t.span.start.line,
                column: t.span.start.column,
            };
            return (Err(TooDeep { at, limit }), skip_statement(tokens));
        }
    }
    // Brackets left open (the parser will say so): close them.
    while stack.len() > 1 {
        close(&mut stack);
    }
    let depth = plan + stack.last().map_or(0, Frame::depth);
    (Ok(depth), used)
}

/// How many tokens the statement at the start of `tokens` has.
fn skip_statement(tokens: &[TokenWithSpan]) -> usize {
    tokens
        .iter()
        .position(|t| matches!(t.token, Token::SemiColon | Token::EOF))
        .unwrap_or(tokens.len())
}

/// Close the innermost frame: its depth goes into its parent's current operand.
fn close(stack: &mut Vec<Frame>) {
    let Some(child) = stack.pop() else { return };
    if let Some(parent) = stack.last_mut() {
        let seg = &mut parent.segment;
        seg.deepest_child = seg.deepest_child.max(child.depth());
    }
}

fn keyword(t: &Token) -> Option<Keyword> {
    match t {
        Token::Word(w) if w.quote_style.is_none() => Some(w.keyword),
        _ => None,
    }
}

fn step(stack: &mut Vec<Frame>, plan: &mut usize, t: &Token) {
    let closing = match t {
        Token::RParen => Some(Open::Paren),
        Token::RBracket => Some(Open::Bracket),
        Token::RBrace => Some(Open::Brace),
        _ => None,
    };
    if let Some(open) = closing
        && stack.iter().any(|f| f.open == open)
    {
        // CASEs left open inside the bracket close with it.
        while stack.last().is_some_and(|f| f.open != open) {
            close(stack);
        }
        close(stack);
        return;
    }
    let Some(top) = stack.last_mut() else { return };
    match t {
        Token::Whitespace(_) => {}
        Token::LParen | Token::LBracket | Token::LBrace => {
            let open = match t {
                Token::LParen => Open::Paren,
                Token::LBracket => Open::Bracket,
                _ => Open::Brace,
            };
            let base = top.base + 1 + top.segment.above_child();
            stack.push(Frame::new(open, base));
        }
        Token::Comma => {
            if top.from_list {
                *plan += 1;
            }
            top.separate();
        }
        // Literals, identifiers and the dots of qualified names never nest by themselves.
        Token::Number(..)
        | Token::SingleQuotedString(_)
        | Token::DoubleQuotedString(_)
        | Token::TripleSingleQuotedString(_)
        | Token::TripleDoubleQuotedString(_)
        | Token::DollarQuotedString(_)
        | Token::SingleQuotedByteStringLiteral(_)
        | Token::DoubleQuotedByteStringLiteral(_)
        | Token::TripleSingleQuotedByteStringLiteral(_)
        | Token::TripleDoubleQuotedByteStringLiteral(_)
        | Token::SingleQuotedRawStringLiteral(_)
        | Token::DoubleQuotedRawStringLiteral(_)
        | Token::TripleSingleQuotedRawStringLiteral(_)
        | Token::TripleDoubleQuotedRawStringLiteral(_)
        | Token::NationalStringLiteral(_)
        | Token::EscapedStringLiteral(_)
        | Token::UnicodeStringLiteral(_)
        | Token::HexStringLiteral(_)
        | Token::Period => {}
        // An identifier (a quoted one may spell a keyword), or a literal.
        Token::Word(_) => match keyword(t) {
            None | Some(Keyword::NoKeyword | Keyword::TRUE | Keyword::FALSE | Keyword::NULL) => {}
            Some(Keyword::OR) => top.segment.or(),
            Some(Keyword::AND) => top.segment.and(),
            Some(Keyword::CASE) => {
                let base = top.base + 1 + top.segment.above_child();
                stack.push(Frame::new(Open::Case, base));
            }
            Some(Keyword::END) if top.open == Open::Case => close(stack),
            Some(Keyword::WHEN | Keyword::THEN | Keyword::ELSE) if top.open == Open::Case => {
                top.separate()
            }
            Some(Keyword::SELECT) => {
                *plan += 1;
                top.from_list = false;
            }
            Some(Keyword::UNION | Keyword::INTERSECT | Keyword::EXCEPT | Keyword::MINUS) => {
                *plan += 1;
                top.from_list = false;
            }
            Some(Keyword::JOIN | Keyword::OVER) => *plan += 1,
            Some(Keyword::FROM) => {
                top.from_list = true;
                top.segment.tokens += 1;
            }
            Some(
                Keyword::WHERE
                | Keyword::GROUP
                | Keyword::HAVING
                | Keyword::QUALIFY
                | Keyword::WINDOW
                | Keyword::ORDER
                | Keyword::LIMIT
                | Keyword::OFFSET
                | Keyword::FETCH,
            ) => {
                top.from_list = false;
                top.segment.tokens += 1;
            }
            Some(_) => top.segment.tokens += 1,
        },
        // Operators and everything else.
        _ => top.segment.tokens += 1,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::tokenizer::Tokenizer;

    fn depths(sql: &str, limit: usize) -> Vec<Result<usize, TooDeep>> {
        let tokens = Tokenizer::new(&GenericDialect {}, sql)
            .tokenize_with_location()
            .unwrap();
        check_script(&tokens, limit)
    }

    fn depth(sql: &str) -> usize {
        match depths(sql, usize::MAX).as_slice() {
            [Ok(d)] => *d,
            other => panic!("{other:?}"),
        }
    }

    fn terms(n: usize, term: impl Fn(usize) -> String, sep: &str) -> String {
        (0..n).map(term).collect::<Vec<_>>().join(sep)
    }

    #[test]
    fn chains_count_one_level_per_operator() {
        // SELECT, the statement, and one level per `+`.
        assert_eq!(depth("SELECT 1"), 2);
        assert_eq!(depth("SELECT 1 + 1"), 3);
        let plus = |n| format!("SELECT {}", terms(n, |_| "1".into(), " + "));
        assert_eq!(depth(&plus(100)), 101);
        assert_eq!(depth(&plus(1000)), 1001);
        // One per OR, plus the deepest operand (FROM, WHERE and `=` in the first one).
        let ors = |n| {
            format!(
                "SELECT a FROM t WHERE {}",
                terms(n, |i| format!("a = {i}"), " OR ")
            )
        };
        assert_eq!(depth(&ors(10)), 2 + 9 + 3);
        assert_eq!(depth(&ors(300)), 2 + 299 + 3);
        // AND inside the OR's operands.
        assert_eq!(
            depth("SELECT a FROM t WHERE a = 1 AND b = 2 OR a = 3 AND b = 4 AND c = 5"),
            2 + 1 + 1 + 3
        );
    }

    #[test]
    fn lists_and_case_branches_are_siblings() {
        let in_list = format!(
            "SELECT a FROM t WHERE a IN ({})",
            terms(10_000, |i| i.to_string(), ", ")
        );
        // WHERE, FROM, IN, and the bracket.
        assert_eq!(depth(&in_list), 2 + 3 + 1);
        let case = format!(
            "SELECT CASE {} ELSE 0 END FROM t",
            terms(1000, |i| format!("WHEN a = {i} THEN {i}"), " ")
        );
        // The CASE and its deepest branch (`a = i`); FROM counts after it.
        assert_eq!(depth(&case), 2 + 1 + 1 + 1);
        let columns = format!(
            "SELECT {} FROM t",
            terms(1000, |i| format!("a + {i}"), ", ")
        );
        assert_eq!(depth(&columns), 2 + 2);
    }

    #[test]
    fn brackets_nest() {
        assert_eq!(depth("SELECT (1)"), 3);
        assert_eq!(depth("SELECT ((1 + 1) + 1)"), 2 + 1 + 1 + 1 + 1);
        // A function's brackets, and the operator after it wraps the call.
        assert_eq!(depth("SELECT f(g(1 + 1)) * 2"), 2 + 1 + 1 + 1 + 1);
        assert_eq!(depth("SELECT a[1][2]"), 3);
    }

    #[test]
    fn queries_joins_and_set_operations_add_plan_levels() {
        let unions = |n| terms(n, |_| "SELECT a FROM t".into(), " UNION ALL ");
        // n SELECTs, n - 1 UNIONs; each FROM and ALL counts in the one segment.
        assert_eq!(depth(&unions(3)), 3 + 2 + 1 + 3 + 2);
        let joins = format!(
            "SELECT * FROM t {}",
            terms(50, |i| format!("JOIN u{i} ON t.a = u{i}.a"), " ")
        );
        assert_eq!(depth(&joins), 1 + 50 + 1 + 1 + 1 + 50 * 2);
        let from_list = format!("SELECT * FROM {}", terms(50, |i| format!("t{i}"), ", "));
        assert_eq!(depth(&from_list), 1 + 49 + 1 + 2);
        let subqueries = format!("SELECT {}", terms(50, |_| "(SELECT 1)".into(), ", "));
        assert_eq!(depth(&subqueries), 51 + 1 + 1);
    }

    #[test]
    fn the_limit_is_exact_and_says_where() {
        let plus = |n| format!("SELECT {}", terms(n, |_| "1".into(), " + "));
        // depth = n + 1
        assert_eq!(depths(&plus(499), 500), vec![Ok(500)]);
        let e = depths(&plus(500), 500).remove(0).unwrap_err();
        // SELECT and the statement are 2 levels, so the 499th `+` passes 500: "SELECT " is 7
        // characters, each "1 + " 4.
        assert_eq!(
            e,
            TooDeep {
                at: Location {
                    line: 1,
                    column: 7 + 498 * 4 + 3
                },
                limit: 500
            }
        );
        assert!(e.message().contains("500 levels"), "{}", e.message());
    }

    #[test]
    fn each_statement_of_a_script_separately() {
        let deep = format!("SELECT {}", terms(20, |_| "1".into(), " + "));
        let r = depths(&format!(";; SELECT 1;\n{deep};SHOW VIEWS;"), 10);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0], Ok(2));
        assert_eq!(r[1].as_ref().unwrap_err().at.line, 2);
        assert_eq!(r[2], Ok(3));
    }

    #[test]
    fn a_huge_chain_is_measured_fast() {
        let ors = format!(
            "SELECT a FROM t WHERE {}",
            terms(20_000, |i| format!("a = {i}"), " OR ")
        );
        let started = std::time::Instant::now();
        let r = depths(&ors, MAX_DEPTH);
        assert!(r[0].is_err());
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }
}
