//! `claude_group_by`: each item into exactly one of the given categories.

use std::fmt;

use rayon::iter::ParallelIterator;

use super::filter::refuse_all;
use super::RunOptions;
use crate::engine::{strict, Policy};
use crate::{Error, Failed, Session};

/// Items sorted into the given categories, and the items that could not be sorted.
///
/// Every category given is present, in the order given, even when empty; no other category
/// is ever created. Items keep their input order within each category.
///
/// # Examples
///
/// On the built-in simulator, which answers a category in turn:
///
/// ```
/// claude_rayon::simulator::serve_if_requested();
/// use claude_rayon::prelude::*;
/// use claude_rayon::Session;
/// use rayon::prelude::*;
///
/// let session = Session::builder().simulated()?.concurrency(2).build()?;
/// let tickets = ["App crashes on start", "Please add dark mode"];
/// let groups = tickets
///     .par_iter()
///     .claude_group_by(&session, ["bug", "feature"], |t| format!("Which kind?\n{t}"))
///     .groups();
/// assert_eq!(groups.len(), 2);
/// assert!(groups.get("bug").is_some());
/// assert_eq!(groups.get("question"), None, "no category outside the list");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Groups<T> {
    /// Each category with its items, in the order the categories were given.
    pub groups: Vec<(String, Vec<T>)>,
    /// Items that could not be sorted, each with why.
    pub failed: Vec<Failed<T>>,
}

impl<T> Groups<T> {
    /// Groups with the given categories and no items.
    fn empty(categories: &[String]) -> Self {
        Groups {
            groups: categories.iter().map(|c| (c.clone(), Vec::new())).collect(),
            failed: Vec::new(),
        }
    }

    /// The items of a category (exact name as given), or `None` for a name not given. See the
    /// type's example for `get`, `iter` and `len` on a real run.
    pub fn get(&self, category: &str) -> Option<&[T]> {
        self.groups
            .iter()
            .find(|(name, _)| name == category)
            .map(|(_, items)| items.as_slice())
    }

    /// Categories and their items, in the order given.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[T])> {
        self.groups
            .iter()
            .map(|(n, items)| (n.as_str(), items.as_slice()))
    }

    /// Items sorted plus items failed.
    pub fn len(&self) -> usize {
        self.groups
            .iter()
            .map(|(_, items)| items.len())
            .sum::<usize>()
            + self.failed.len()
    }

    /// Whether there were no items at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Check category names: present, distinct (case and punctuation aside), one line each.
fn check_categories(categories: &[String]) -> Result<(), Error> {
    if categories.is_empty() {
        return Err(Error::InvalidConfig(
            "claude_group_by needs at least one category".into(),
        ));
    }
    for (i, category) in categories.iter().enumerate() {
        let normal = strict::normalize(category);
        if normal.is_empty() {
            return Err(Error::InvalidConfig(format!(
                "category {category:?} is empty"
            )));
        }
        if category.contains('|') || category.contains('\n') {
            return Err(Error::InvalidConfig(format!(
                "category {category:?} may not contain '|' or a line break"
            )));
        }
        if categories[..i]
            .iter()
            .any(|c| strict::normalize(c) == normal)
        {
            return Err(Error::InvalidConfig(format!(
                "category {category:?} is given twice (case and punctuation aside)"
            )));
        }
    }
    Ok(())
}

/// The adaptor behind
/// [`claude_group_by`](crate::prelude::ClaudeParallelIterator::claude_group_by). Lazy:
/// nothing runs until [`groups`](Self::groups) is called.
#[must_use = "claude_group_by does nothing until .groups() is called"]
pub struct ClaudeGroupBy<I, F> {
    base: I,
    session: Session,
    categories: Vec<String>,
    prompt_fn: F,
    options: RunOptions,
}

impl<I, F> ClaudeGroupBy<I, F> {
    pub(crate) fn new(base: I, session: &Session, categories: Vec<String>, prompt_fn: F) -> Self {
        ClaudeGroupBy {
            base,
            session: session.clone(),
            categories,
            prompt_fn,
            options: RunOptions::default(),
        }
    }

    run_options!();
}

impl<I, F, P> ClaudeGroupBy<I, F>
where
    I: ParallelIterator,
    F: Fn(&I::Item) -> P + Sync + Send,
    P: AsRef<str>,
{
    /// Run: sort every item into its category, in input order within each.
    pub fn groups(self) -> Groups<I::Item> {
        let items: Vec<I::Item> = self.base.collect();
        let categories = self.categories;
        let mut groups = Groups::empty(&categories);
        let run = self
            .options
            .start(&self.session, "claude_group_by", items.len());
        let refused = check_categories(&categories)
            .and_then(|()| strict::check_session(&self.session, "claude_group_by"));
        // Each item with the index of its category, or failed.
        type Sorted<T> = Result<(usize, T), Failed<T>>;
        let results: Vec<Sorted<I::Item>> = match refused {
            Err(error) => refuse_all(&run, items, error),
            Ok(()) => {
                let interpret = |answer: &str| strict::match_answer(answer, &categories);
                let policy = Policy::Strict {
                    allowed: &categories,
                    interpret: &interpret,
                };
                let prompt_fn = &self.prompt_fn;
                run.answer_items(items, prompt_fn, &policy, |outcome| {
                    let (item, answer) = outcome?;
                    Ok((answer.choice.expect("a strict answer has a choice"), item))
                })
            }
        };
        for result in results {
            match result {
                Ok((index, item)) => groups.groups[index].1.push(item),
                Err(failed) => groups.failed.push(failed),
            }
        }
        groups
    }
}

impl<I: fmt::Debug, F> fmt::Debug for ClaudeGroupBy<I, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClaudeGroupBy")
            .field("base", &self.base)
            .field("session", &self.session)
            .field("categories", &self.categories)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn categories_are_checked() {
        assert!(check_categories(&names(&["bug", "feature"])).is_ok());
        assert!(check_categories(&[]).is_err());
        assert!(check_categories(&names(&["bug", "Bug."])).is_err());
        assert!(check_categories(&names(&["a|b"])).is_err());
        assert!(check_categories(&names(&["..."])).is_err());
    }
}
