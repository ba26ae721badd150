//! Frames that are the same for every session but for a few values (hello-ok, the health reply).
//! Such a frame is serialized from its typed value once, with a placeholder value wherever a
//! per-session value goes; each session then copies the fixed text and serializes only its own
//! values into the holes. Field names, order and shapes still come from the types alone, and a
//! filled template is the text the whole value would serialize to (the gateway's tests compare
//! the two).

use serde::Serialize;

/// A frame's text split at its holes. `H` names the holes (the caller's own enum).
#[derive(Debug)]
pub struct Template<H> {
    /// The fixed text: the part before each hole, and after the last (one more than `holes`).
    pieces: Vec<Box<str>>,
    /// The holes in text order.
    holes: Vec<H>,
    fixed_len: usize,
}

/// Why a text cannot be cut into a template.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadTemplate {
    #[error("a placeholder occurs {0} times in the template's text, not once")]
    NotOnce(usize),
    #[error("two placeholders overlap in the template's text")]
    Overlap,
}

/// A placeholder string value: a NUL byte (escaped by JSON as `\u0000`) cannot be confused with
/// real data of the fields it stands in.
pub fn placeholder_str(hole: usize) -> String {
    format!("\u{0}driftless-hole-{hole}")
}

/// A placeholder number: the largest `u64`s, no timestamp or duration.
pub fn placeholder_u64(hole: usize) -> u64 {
    u64::MAX - hole as u64
}

/// The JSON text of `value`, as it appears inside a serialized frame (to name a placeholder).
pub fn json_text(value: &(impl Serialize + ?Sized)) -> String {
    serde_json::to_string(value).expect("protocol values serialize")
}

/// Appends the JSON text of `value` (a hole's content).
pub fn write_json(out: &mut Vec<u8>, value: &(impl Serialize + ?Sized)) {
    serde_json::to_writer(out, value).expect("protocol values serialize");
}

impl<H: Copy> Template<H> {
    /// Cuts `text`, a frame serialized with placeholders, at each placeholder: `(hole, its JSON
    /// text)`. Each must occur exactly once.
    pub fn new(text: &str, placeholders: &[(H, String)]) -> Result<Template<H>, BadTemplate> {
        let mut found = Vec::with_capacity(placeholders.len());
        for (hole, placeholder) in placeholders {
            let mut at = text.match_indices(placeholder.as_str()).map(|(i, _)| i);
            match (at.next(), at.next()) {
                (Some(start), None) => found.push((start, start + placeholder.len(), *hole)),
                _ => {
                    return Err(BadTemplate::NotOnce(
                        text.matches(placeholder.as_str()).count(),
                    ));
                }
            }
        }
        found.sort_unstable_by_key(|&(start, _, _)| start);
        let mut pieces = Vec::with_capacity(found.len() + 1);
        let mut holes = Vec::with_capacity(found.len());
        let mut from = 0;
        for (start, end, hole) in found {
            if start < from {
                return Err(BadTemplate::Overlap);
            }
            pieces.push(Box::<str>::from(&text[from..start]));
            holes.push(hole);
            from = end;
        }
        pieces.push(text[from..].into());
        let fixed_len = pieces.iter().map(|p| p.len()).sum();
        Ok(Template {
            pieces,
            holes,
            fixed_len,
        })
    }

    /// The frame's text, each hole filled by `fill(hole, out)` appending its JSON (with
    /// [`write_json`]); `room` is a guess of the holes' total length, so the text is written
    /// into one allocation.
    pub fn render(&self, room: usize, mut fill: impl FnMut(H, &mut Vec<u8>)) -> String {
        let mut out = Vec::with_capacity(self.fixed_len + room);
        for (piece, hole) in self.pieces.iter().zip(&self.holes) {
            out.extend_from_slice(piece.as_bytes());
            fill(*hole, &mut out);
        }
        if let Some(last) = self.pieces.last() {
            out.extend_from_slice(last.as_bytes());
        }
        String::from_utf8(out).expect("a template and serde_json write UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Frame<'a> {
        id: &'a str,
        fixed: &'a str,
        ts: u64,
        list: Vec<u64>,
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Hole {
        Id,
        Ts,
    }

    fn template() -> Template<Hole> {
        let id = placeholder_str(0);
        let ts = placeholder_u64(1);
        let text = json_text(&Frame {
            id: &id,
            fixed: "same \"every\" time",
            ts,
            list: vec![1, 2],
        });
        Template::new(
            &text,
            &[(Hole::Ts, json_text(&ts)), (Hole::Id, json_text(&id))],
        )
        .unwrap()
    }

    #[test]
    fn a_filled_template_is_the_value_serialized_whole() {
        let filled = template().render(0, |hole, out| match hole {
            Hole::Id => write_json(out, &"a\"b"),
            Hole::Ts => write_json(out, &42u64),
        });
        let whole = json_text(&Frame {
            id: "a\"b",
            fixed: "same \"every\" time",
            ts: 42,
            list: vec![1, 2],
        });
        assert_eq!(filled, whole);
    }

    #[test]
    fn holes_are_filled_in_text_order_whatever_order_they_were_named_in() {
        let mut seen = Vec::new();
        template().render(0, |hole, _| seen.push(hole));
        assert_eq!(seen, [Hole::Id, Hole::Ts]);
    }

    #[test]
    fn a_placeholder_that_is_missing_or_repeated_is_refused() {
        let text = r#"{"a":"x","b":"x"}"#;
        assert_eq!(
            Template::new(text, &[(0, "\"x\"".into())]).unwrap_err(),
            BadTemplate::NotOnce(2)
        );
        assert_eq!(
            Template::new(text, &[(0, "\"y\"".into())]).unwrap_err(),
            BadTemplate::NotOnce(0)
        );
        assert_eq!(
            Template::new(text, &[(0, "\"a\":\"x\"".into()), (1, "x\",\"b".into())]).unwrap_err(),
            BadTemplate::Overlap
        );
    }
}
