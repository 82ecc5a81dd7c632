//! Chat templates: the model's own Jinja template rendered the way Hugging
//! Face transformers renders it (`trim_blocks`, `lstrip_blocks`,
//! `raise_exception`, HF's `tojson`, no current date), or, for base models,
//! an explicit plain-prompt format. The template's hash goes into the manifest.

use minijinja::value::Value;
use minijinja::{Environment, ErrorKind};
use serde::Serialize;

use crate::core::error::{Error, Result};
use crate::core::hash::sha256_hex;

/// One chat message.
/// One chat message. `content` is the text; `parts` is empty for a text
/// message, or the message's items in order when it carries media, and the
/// template then sees `content` as a list of `{"type": "image"|"video"|
/// "audio"}` and `{"type": "text", "text": ...}` items, the way
/// transformers' processors pass multimodal messages to chat templates.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: String,
    pub content: String,
    pub parts: Vec<ChatPart>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ChatPart {
    Text(String),
    Image,
    Video,
    Audio,
}

impl Serialize for Message {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("role", &self.role)?;
        if self.parts.iter().any(|p| !matches!(p, ChatPart::Text(_))) {
            let items: Vec<serde_json::Value> = self
                .parts
                .iter()
                .map(|p| match p {
                    ChatPart::Text(t) => serde_json::json!({"type": "text", "text": t}),
                    ChatPart::Image => serde_json::json!({"type": "image"}),
                    ChatPart::Video => serde_json::json!({"type": "video"}),
                    ChatPart::Audio => serde_json::json!({"type": "audio"}),
                })
                .collect();
            m.serialize_entry("content", &items)?;
        } else {
            m.serialize_entry("content", &self.content)?;
        }
        m.end()
    }
}

impl Message {
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
            parts: Vec::new(),
        }
    }
    /// A message with media items (in order) and text.
    pub fn with_parts(role: &str, parts: Vec<ChatPart>) -> Self {
        let content = parts
            .iter()
            .filter_map(|p| match p {
                ChatPart::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n");
        Message {
            role: role.into(),
            content,
            parts,
        }
    }
    pub fn has_media(&self) -> bool {
        self.parts.iter().any(|p| !matches!(p, ChatPart::Text(_)))
    }
}

/// The plain format used for models without a template (base models).
pub const PLAIN_FORMAT: &str = "{% for m in messages %}{% if m.role == 'system' %}{{ m.content }}\n\n{% elif m.role == 'user' %}User: {{ m.content }}\n{% else %}Assistant: {{ m.content }}\n{% endif %}{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}";

/// The date `strftime_now` returns: fixed, so renders never depend on the day.
pub const FIXED_DATE: &str = "26 Jul 2024";

#[derive(Debug, Clone)]
pub struct ChatTemplate {
    pub source: String,
    /// Where the template came from (`gguf:tokenizer.chat_template`, `plain`, ...).
    pub origin: String,
    pub bos_token: String,
    pub eos_token: String,
}

/// Python's `json.dumps(x, ensure_ascii=False)` with default separators
/// (", " and ": "), as transformers' `tojson` filter produces without indent.
fn py_json(v: &serde_json::Value, out: &mut String) {
    match v {
        serde_json::Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_json(x, out);
            }
            out.push(']');
        }
        serde_json::Value::Object(o) => {
            out.push('{');
            for (i, (k, x)) in o.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&serde_json::Value::String(k.clone()).to_string());
                out.push_str(": ");
                py_json(x, out);
            }
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// `** n` powers in a template.
fn hostile_arithmetic() -> &'static regex::Regex {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| regex::Regex::new(r"\*\*\s*[\d(]").expect("valid regex"))
}

/// Largest product of integer literals a template may multiply by in one
/// chain (`x * 999 * 999` is 998,001: allowed; `* 999 * 999 * 999` is not).
const MAX_REPEAT_FACTOR: u128 = 1_000_000;

/// The largest product of a chain of integer literals joined by `*`, e.g.
/// `[x] * 999 * 999 * 999` or `5 * 444444444`, anywhere in the source. A
/// chain needs at least one `*` before a literal; `**` is refused apart
/// ([`hostile_arithmetic`]).
fn largest_literal_product(src: &str) -> u128 {
    static CHAIN: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    static NUMBER: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let chain = CHAIN
        .get_or_init(|| regex::Regex::new(r"(?:\d+\s*)?(?:\*\s*\d+\s*)+").expect("valid regex"));
    let number = NUMBER.get_or_init(|| regex::Regex::new(r"\d+").expect("valid regex"));
    chain
        .find_iter(src)
        .map(|m| {
            number
                .find_iter(m.as_str())
                .map(|n| n.as_str().parse::<u128>().unwrap_or(u128::MAX))
                .fold(1u128, u128::saturating_mul)
        })
        .max()
        .unwrap_or(0)
}

/// Template instructions one render may execute: real chat templates use
/// a few hundred per message.
const TEMPLATE_FUEL: u64 = 20_000_000;

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(false);
    // A chat template comes with a model folder: bound its work (a loop over
    // range(10**9) runs out of fuel instead of running for hours).
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("template raised: {msg}"),
            ))
        },
    );
    env.add_function("strftime_now", |_fmt: String| FIXED_DATE.to_string());
    env.add_filter(
        "tojson",
        |v: Value| -> std::result::Result<Value, minijinja::Error> {
            let j: serde_json::Value = serde_json::to_value(&v)
                .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
            let mut s = String::new();
            py_json(&j, &mut s);
            Ok(Value::from_safe_string(s))
        },
    );
    env
}

impl ChatTemplate {
    pub fn new(
        source: impl Into<String>,
        origin: impl Into<String>,
        bos_token: &str,
        eos_token: &str,
    ) -> Self {
        ChatTemplate {
            source: source.into(),
            origin: origin.into(),
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
        }
    }
    pub fn plain() -> Self {
        ChatTemplate::new(PLAIN_FORMAT, "plain", "", "")
    }
    /// Stop strings the format needs: a base model in the plain format goes
    /// on to write the next "User:" turn itself.
    pub fn stop_strings(&self) -> Vec<String> {
        if self.origin == "plain" {
            vec!["\nUser:".to_string()]
        } else {
            vec![]
        }
    }

    /// sha256 of the template source and its origin.
    pub fn hash(&self) -> String {
        sha256_hex(format!("{}\n{}", self.origin, self.source).as_bytes())
    }

    /// Render messages with the generation prompt appended.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        // minijinja 2 can panic on hostile templates (overflows in its
        // arithmetic and in its error's debug output, found by fuzzing,
        // tests/fixtures/fuzz/template/): compiling, rendering and formatting
        // the error all run contained, so such a template is an error.
        let origin = &self.origin;
        // minijinja repeats a sequence element by element (`[] * 10**9` runs
        // for hours, or with a wrapped length allocates gigabytes; found by
        // fuzzing). Chat templates never multiply by a product of literals
        // over a million or raise to a power: such a template is refused
        // before it runs. (A factor held in a variable is not caught.)
        if hostile_arithmetic().is_match(&self.source)
            || largest_literal_product(&self.source) > MAX_REPEAT_FACTOR
        {
            return Err(Error::Usage(format!(
                "chat template ({origin}) multiplies by a huge number or raises to a power; refused (fix: use the model's own chat template)"
            )));
        }
        let out = crate::core::guard::contain(|| {
            let env = environment();
            let tpl = env
                .template_from_str(&self.source)
                .map_err(|e| format!("chat template ({origin}) does not compile: {e:#}"))?;
            tpl.render(minijinja::context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token,
                eos_token => self.eos_token,
            })
            .map_err(|e| format!("chat template ({origin}) failed: {e:#}"))
        });
        match out {
            Ok(r) => r.map_err(Error::Usage),
            Err(panic) => Err(Error::Usage(format!(
                "chat template ({origin}) failed: the template engine failed ({panic})"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_like_template_renders_as_hf() {
        let src = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
        let t = ChatTemplate::new(src, "test", "", "<|im_end|>");
        let out = t
            .render(&[Message::new("user", "안녕하세요")], true)
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>user\n안녕하세요<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn a_template_that_would_run_for_hours_runs_out_of_fuel() {
        let t = ChatTemplate::new(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            "hostile",
            "",
            "",
        );
        let e = t.render(&[Message::new("user", "x")], true).unwrap_err();
        assert!(e.to_string().contains("fuel"), "{e}");
    }

    #[test]
    fn huge_repetitions_and_powers_are_refused_before_running() {
        for src in [
            "{{ [] * 7522759323 }}",
            "{{ 'x' * 7 ** 14 }}",
            "{{ [1] * 5 * 444444444 }}",
            "{{ [0] * 999 * 999 * 999 }}",
            "{{ ([0] * 99 * 99 * 99 * 99)|join }}",
            "{{ 999 * 999 * 999 * [0] }}",
            "{{ [] * 7522759323 }}",
        ] {
            let t = ChatTemplate::new(src, "hostile", "", "");
            let e = t.render(&[Message::new("user", "x")], true).unwrap_err();
            assert!(e.to_string().contains("refused"), "{src}: {e}");
        }
        // Small factors pass: the limit is on the product.
        assert_eq!(
            largest_literal_product("{{ '-' * 80 }} {{ 2 * 3 * 4 }}"),
            80
        );
        assert_eq!(largest_literal_product("{{ x * 999 * 999 }}"), 998_001);
        assert_eq!(
            largest_literal_product("{{ 999*999*999*[0] }}"),
            997_002_999
        );
        assert_eq!(largest_literal_product("no stars 123456789"), 0);
        // Markdown bold in a template's text is not a power.
        let t = ChatTemplate::new("**Rules:** {{ messages[0].content }}", "md", "", "");
        assert_eq!(
            t.render(&[Message::new("user", "x")], false).unwrap(),
            "**Rules:** x"
        );
    }

    #[test]
    fn raise_exception_and_pycompat_methods() {
        let t = ChatTemplate::new("{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}{{ messages[0]['content'].strip() | upper }}", "t", "", "");
        assert_eq!(
            t.render(&[Message::new("user", "  hi ")], false).unwrap(),
            "HI"
        );
        let e = t
            .render(&[Message::new("system", "x")], false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("first must be user"), "{e}");
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        let t = ChatTemplate::new(
            "{{ {'a': 1, 'b': [1, 2], 'c': '한<>'} | tojson }}",
            "t",
            "",
            "",
        );
        assert_eq!(
            t.render(&[], false).unwrap(),
            "{\"a\": 1, \"b\": [1, 2], \"c\": \"한<>\"}"
        );
    }

    #[test]
    fn plain_format() {
        let out = ChatTemplate::plain()
            .render(
                &[Message::new("system", "S"), Message::new("user", "질문")],
                true,
            )
            .unwrap();
        assert_eq!(out, "S\n\nUser: 질문\nAssistant:");
    }
}
