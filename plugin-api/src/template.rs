//! `$variable` templates as nginx writes them (`"$remote_addr - [$time_local]"`,
//! `${name}suffix`): split once at configuration time, rendered per request.

/// A piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg<'a> {
    /// Literal text.
    Lit(&'a str),
    /// A variable name (without `$`).
    Var(&'a str),
}

fn is_name(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Calls `f` for each segment of `t`, in order. A `$` not followed by a
/// name is literal.
pub fn walk<'a>(t: &'a str, mut f: impl FnMut(Seg<'a>)) {
    let b = t.as_bytes();
    let (mut i, mut lit) = (0, 0);
    while i < b.len() {
        if b[i] != b'$' {
            i += 1;
            continue;
        }
        let (start, end, next) = if b.get(i + 1) == Some(&b'{') {
            match t[i + 2..].find('}') {
                Some(n) => (i + 2, i + 2 + n, i + 3 + n),
                None => (i + 1, i + 1, i + 1),
            }
        } else {
            // `$1x` is capture 1 then "x", as in nginx.
            let n = if b.get(i + 1).is_some_and(u8::is_ascii_digit) {
                b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count()
            } else {
                b[i + 1..].iter().take_while(|&&c| is_name(c)).count()
            };
            (i + 1, i + 1 + n, i + 1 + n)
        };
        if end == start {
            i += 1;
            continue;
        }
        if lit < i {
            f(Seg::Lit(&t[lit..i]));
        }
        f(Seg::Var(&t[start..end]));
        i = next;
        lit = next;
    }
    if lit < b.len() {
        f(Seg::Lit(&t[lit..]));
    }
}

/// A template split into owned segments, for keeping in configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Template {
    /// (is_variable, text) pairs.
    pub segs: Vec<(bool, String)>,
}

impl Template {
    /// Splits `t`.
    pub fn parse(t: &str) -> Template {
        let mut segs = Vec::new();
        walk(t, |s| match s {
            Seg::Lit(l) => segs.push((false, l.to_string())),
            Seg::Var(v) => segs.push((true, v.to_string())),
        });
        Template { segs }
    }

    /// Renders into `out`, asking `var` for each variable's value.
    pub fn render(&self, out: &mut Vec<u8>, mut var: impl FnMut(&str, &mut Vec<u8>)) {
        for (is_var, s) in &self.segs {
            if *is_var {
                var(s, out);
            } else {
                out.extend_from_slice(s.as_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits() {
        let t = Template::parse("$remote_addr - ${a}b [$time_local] $ $1x \"$request\"");
        let got: Vec<String> = t.segs.iter().map(|(v, s)| if *v { format!("<{s}>") } else { s.clone() }).collect();
        assert_eq!(got.concat(), "<remote_addr> - <a>b [<time_local>] $ <1>x \"<request>\"");
    }
}
