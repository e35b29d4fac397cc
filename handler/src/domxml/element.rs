//! A small XML writer: elements rendered like `virsh dumpxml`.

use super::*;

// A small XML writer

/// An element being built. It renders with two-space indentation and
/// single-quoted attributes, like `virsh dumpxml`. An element has text or
/// children, not both.
#[derive(Clone)]
pub(super) struct Element {
    pub(super) name: String,
    pub(super) attrs: Vec<(String, String)>,
    pub(super) text: Option<String>,
    pub(super) children: Vec<Element>,
}

impl Element {
    pub(super) fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            attrs: Vec::new(),
            text: None,
            children: Vec::new(),
        }
    }

    pub(super) fn attr(mut self, key: impl Into<String>, value: impl Display) -> Self {
        self.attrs.push((key.into(), value.to_string()));
        self
    }

    pub(super) fn text(mut self, text: impl Display) -> Self {
        self.text = Some(text.to_string());
        self
    }

    pub(super) fn child(mut self, child: Element) -> Self {
        self.children.push(child);
        self
    }

    pub(super) fn child_opt(self, child: Option<Element>) -> Self {
        match child {
            Some(c) => self.child(c),
            None => self,
        }
    }

    pub(super) fn children(mut self, children: impl IntoIterator<Item = Element>) -> Self {
        self.children.extend(children);
        self
    }

    pub(super) fn render(&self, out: &mut String, depth: usize) {
        let indent = "  ".repeat(depth);
        out.push_str(&indent);
        out.push('<');
        out.push_str(&self.name);
        for (key, value) in &self.attrs {
            out.push(' ');
            out.push_str(key);
            out.push_str("='");
            escape(value, true, out);
            out.push('\'');
        }
        match (&self.text, self.children.is_empty()) {
            (Some(text), _) => {
                out.push('>');
                escape(text, false, out);
            }
            (None, true) => {
                out.push_str("/>\n");
                return;
            }
            (None, false) => {
                out.push_str(">\n");
                for child in &self.children {
                    child.render(out, depth + 1);
                }
                out.push_str(&indent);
            }
        }
        out.push_str("</");
        out.push_str(&self.name);
        out.push_str(">\n");
    }
}

/// Escapes text or a single-quoted attribute value. Characters XML cannot
/// carry at all (most control characters) become U+FFFD; the fields users
/// write free text into are checked before they get here.
pub(super) fn escape(s: &str, attribute: bool, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' if attribute => out.push_str("&apos;"),
            '"' if attribute => out.push_str("&quot;"),
            '\t' | '\n' | '\r' if attribute => {
                let _ = write!(out, "&#{};", u32::from(c));
            }
            '\t' | '\n' | '\r' => out.push(c),
            c if c < ' ' || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
}
