//! `claude_group_by`: each item into exactly one of the given categories.

use rayon::iter::ParallelIterator;

use super::dispatch::{begin, dispatch, RunKind};
use super::filter::refuse_all;
use super::strict;
use crate::cancel::RunControl;
use crate::{Cancel, Error, Failed, Session};

/// Items sorted into the given categories, and the items that could not be sorted.
///
/// Every category given is present, in the order given, even when empty; no other category
/// is ever created. Items keep their input order within each category.
///
/// # Examples
///
/// ```
/// use claude_rayon::iter::Groups;
///
/// let groups: Groups<&str> = Groups::empty(["bug", "feature"]);
/// assert_eq!(groups.get("bug"), Some(&[][..]));
/// assert_eq!(groups.get("question"), None);
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
    pub fn empty<S: Into<String>>(categories: impl IntoIterator<Item = S>) -> Self {
        Groups {
            groups: categories
                .into_iter()
                .map(|c| (c.into(), Vec::new()))
                .collect(),
            failed: Vec::new(),
        }
    }

    /// The items of a category (exact name as given), or `None` for a name not given.
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

/// The terminal `claude_group_by` run.
pub(crate) fn group_by<I, F, P>(
    base: I,
    session: &Session,
    categories: Vec<String>,
    prompt_fn: F,
    cancel: Option<Cancel>,
) -> Groups<I::Item>
where
    I: ParallelIterator,
    F: Fn(&I::Item) -> P + Sync + Send,
    P: AsRef<str>,
{
    let items: Vec<I::Item> = base.collect();
    let mut groups = Groups::empty(categories.iter().cloned());
    let refused = check_categories(&categories)
        .and_then(|()| strict::check_session(session, "claude_group_by"));
    // Each item with the index of its category, or failed.
    type Sorted<T> = Result<(usize, T), Failed<T>>;
    let results: Vec<Sorted<I::Item>> = match refused {
        Err(error) => refuse_all(session, items, error),
        Ok(()) => {
            let control = RunControl::new(cancel);
            let interpret = |answer: &str| strict::match_answer(answer, &categories);
            let kind = RunKind {
                name: "claude_group_by",
                succeeded: |r: &Sorted<I::Item>| r.is_ok(),
            };
            dispatch(session, items, &control, kind, |item, control| {
                let (item, prompt) = begin(session, control, &prompt_fn, item)?;
                match strict::ask(session, control, &prompt, &categories, &interpret) {
                    Ok((index, _, _)) => Ok((index, item)),
                    Err((error, attempts)) => Err(Failed {
                        item,
                        error,
                        attempts,
                    }),
                }
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
