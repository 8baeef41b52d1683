//! Prompt templates: sentences with a `{}` where the class name goes.

use super::hash::Hash64;
use crate::{Error, Result};
use std::path::Path;

/// OpenAI CLIP's 80 ImageNet templates, as open_clip's `OPENAI_IMAGENET_TEMPLATES`.
const OPENAI_TXT: &str = include_str!("../../assets/templates/openai.txt");
/// open_clip's 7 `SIMPLE_IMAGENET_TEMPLATES`.
const SIMPLE_TXT: &str = include_str!("../../assets/templates/simple.txt");

/// The placeholder a template's class name replaces.
pub const PLACEHOLDER: &str = "{}";

/// A named list of prompt templates, each with at least one `{}` (every `{}` becomes the class
/// name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Templates {
    name: String,
    templates: Vec<String>,
}

impl Templates {
    /// OpenAI CLIP's 80 ImageNet templates ("a bad photo of a {}.", ..., "a tattoo of the {}.").
    pub fn openai() -> Templates {
        Self::from_text(
            "openai",
            OPENAI_TXT,
            "<embedded assets/templates/openai.txt>",
        )
        .expect("embedded templates parse")
    }

    /// open_clip's 7 "simple" ImageNet templates ("itap of a {}.", ...).
    pub fn simple() -> Templates {
        Self::from_text(
            "simple",
            SIMPLE_TXT,
            "<embedded assets/templates/simple.txt>",
        )
        .expect("embedded templates parse")
    }

    /// A template file: one template per line; blank lines and lines starting with `#` (after
    /// leading whitespace) are skipped; surrounding whitespace is trimmed. A template without
    /// `{}` is an error naming `file:line`; so is a file with no template at all.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Templates> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let name = path.display().to_string();
        Self::from_text(&name, &text, &name)
    }

    /// `"openai"`, `"simple"`, or else the path of a template file ([`Templates::from_file`]).
    pub fn parse(name_or_path: &str) -> Result<Templates> {
        match name_or_path {
            "openai" => Ok(Self::openai()),
            "simple" => Ok(Self::simple()),
            path => Self::from_file(path),
        }
    }

    /// Templates from the text of a template file (see [`Templates::from_file`]); `source`
    /// names the text in errors.
    pub fn from_text(name: &str, text: &str, source: &str) -> Result<Templates> {
        let mut templates = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let t = line.trim();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            if !t.contains(PLACEHOLDER) {
                return Err(Error::format(
                    format!("{source}:{}", i + 1),
                    format!("template {t:?} has no {PLACEHOLDER} for the class name"),
                ));
            }
            templates.push(t.to_string());
        }
        if templates.is_empty() {
            return Err(Error::format(
                source,
                "no templates (every line blank or a comment)",
            ));
        }
        Ok(Templates {
            name: name.to_string(),
            templates,
        })
    }

    /// Templates from a list; each must contain `{}` and the list must not be empty.
    pub fn new(name: &str, templates: Vec<String>) -> Result<Templates> {
        if templates.is_empty() {
            return Err(Error::Msg(format!("templates {name:?}: the list is empty")));
        }
        if let Some(t) = templates.iter().find(|t| !t.contains(PLACEHOLDER)) {
            return Err(Error::Msg(format!(
                "templates {name:?}: template {t:?} has no {PLACEHOLDER} for the class name"
            )));
        }
        Ok(Templates {
            name: name.to_string(),
            templates,
        })
    }

    /// Just template `index` (for single-template numbers), named `"<name>[index]"`.
    pub fn single(&self, index: usize) -> Result<Templates> {
        let t = self.templates.get(index).ok_or_else(|| {
            Error::Msg(format!(
                "templates {:?}: index {index} out of range (there are {})",
                self.name,
                self.templates.len()
            ))
        })?;
        Ok(Templates {
            name: format!("{}[{index}]", self.name),
            templates: vec![t.clone()],
        })
    }

    /// "openai", "simple", the file path, or the name given to [`Templates::new`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// [`Templates::name`] made safe for a file name (a template file's stem, other characters
    /// than letters, digits, `-` and `_` replaced by `_`): the classifier cache is named by it.
    pub fn file_tag(&self) -> String {
        let stem = Path::new(&self.name)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.name.clone());
        stem.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    }

    pub fn as_slice(&self) -> &[String] {
        &self.templates
    }

    pub fn len(&self) -> usize {
        self.templates.len()
    }

    pub fn is_empty(&self) -> bool {
        self.templates.is_empty()
    }

    /// The prompts of one class: every template with each `{}` replaced by `class_name`.
    pub fn fill(&self, class_name: &str) -> Vec<String> {
        self.templates
            .iter()
            .map(|t| t.replace(PLACEHOLDER, class_name))
            .collect()
    }

    /// A stable 64-bit hash of the template strings (not the name), as 16 hex digits.
    pub fn hash(&self) -> String {
        let mut h = Hash64::new();
        for t in &self.templates {
            h.str(t);
        }
        h.hex()
    }
}
