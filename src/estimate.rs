//! What a run would take before it spends anything: [`Session::estimate`] counts the input
//! tokens as the budget and the throttle do (prompt bytes / 4, the backend's request
//! framing, the shared instructions with the prompt cache's discount where it applies),
//! guesses the output, and prices both at the model's list prices.

use std::fmt;

use crate::admission::CACHE_MIN_TOKENS;
use crate::budget::list_price;
use crate::journal::format::Key;
use crate::throttle::estimate_tokens;
use crate::Session;

/// Where an [`Estimate`]'s output tokens per item come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OutputBasis {
    /// [`Estimate::with_output_tokens`]: the caller's guess.
    Guess,
    /// The average of the answers this session has been paid for so far.
    AnswersSoFar,
    /// No answer yet and no guess: the session's
    /// [`output_token_allowance`](crate::SessionBuilder::output_token_allowance) (1,024 by
    /// default), what the throttle charges an item up front.
    Allowance,
}

/// What a run would take at list prices, from [`Session::estimate`]: tokens and US dollars,
/// before any call. Its `Display` is a short report for a person.
///
/// Input is counted as the library counts it for the budget (about four bytes a token), so
/// it is close for English prose and low for code or other languages; output is a guess
/// ([`output_basis`](Self::output_basis)), bounded by
/// [`max_cost_usd`](Self::max_cost_usd) where the backend has a `max_tokens`. Retries, the
/// re-prompts of `claude_filter`, `claude_group_by` and typed answers, and the calls the CLI
/// makes on its own are not in it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Estimate {
    /// Items counted.
    pub items: u64,
    /// Items whose answer the session's journal has: free, and not counted below.
    pub already_answered: u64,
    /// Input tokens at the normal rate: the prompts, each request's framing, and the shared
    /// instructions where they are not read from the prompt cache.
    pub input_tokens: u64,
    /// Input tokens written to the prompt cache (at 1.25 times the input price).
    pub cache_write_tokens: u64,
    /// Input tokens read from the prompt cache (at 0.1 times the input price).
    pub cache_read_tokens: u64,
    /// Output tokens per item to ask.
    pub output_tokens_per_item: u64,
    /// Where [`output_tokens_per_item`](Self::output_tokens_per_item) comes from.
    pub output_basis: OutputBasis,
    /// Output tokens for every item to ask.
    pub output_tokens: u64,
    /// The most output tokens one call may write (the Messages API backend's `max_tokens`);
    /// `None` on the CLI backend, whose CLI decides.
    pub max_tokens_per_call: Option<u64>,
    /// The model priced (`None`: the CLI's default, priced as the current Opus).
    pub model: Option<String>,
    /// The prices used, in US dollars per million tokens: input, output (the list prices,
    /// halved on a [`Backend::Batches`](crate::Backend::Batches) session).
    pub price_per_million: (f64, f64),
    /// What the input costs, in US dollars.
    pub input_cost_usd: f64,
    /// Input plus the expected output, in US dollars.
    pub cost_usd: f64,
    /// Input plus every answer at [`max_tokens_per_call`](Self::max_tokens_per_call), in US
    /// dollars: what the run cannot cost more than without retries or continuations.
    pub max_cost_usd: Option<f64>,
}

impl Estimate {
    /// The same estimate with a guess of the output tokens per item (a one-line answer is
    /// about 20, a paragraph about 150, a page about 600).
    ///
    /// # Examples
    ///
    /// ```
    /// # claude_rayon::simulator::serve_if_requested();
    /// let session = claude_rayon::Session::builder().simulated()?.model("haiku").build()?;
    /// let estimate = session.estimate(["Is 7 prime?", "Is 9 prime?"]).with_output_tokens(5);
    /// assert_eq!(estimate.output_tokens, 10);
    /// # Ok::<(), claude_rayon::Error>(())
    /// ```
    pub fn with_output_tokens(mut self, per_item: u64) -> Estimate {
        self.output_basis = OutputBasis::Guess;
        self.priced(per_item)
    }

    /// Price the estimate with `per_item` output tokens per item.
    fn priced(mut self, per_item: u64) -> Estimate {
        let to_ask = self.items - self.already_answered;
        let (input_price, output_price) = self.price_per_million;
        self.output_tokens_per_item = per_item;
        self.output_tokens = per_item.saturating_mul(to_ask);
        let output_cost = |tokens: u64| tokens as f64 * output_price / 1_000_000.0;
        self.input_cost_usd = (self.input_tokens as f64
            + self.cache_write_tokens as f64 * 1.25
            + self.cache_read_tokens as f64 * 0.1)
            * input_price
            / 1_000_000.0;
        self.cost_usd = self.input_cost_usd + output_cost(self.output_tokens);
        self.max_cost_usd = self
            .max_tokens_per_call
            .map(|max| self.input_cost_usd + output_cost(max.saturating_mul(to_ask)));
        self
    }
}

impl Session {
    /// What a run of these prompts would take at list prices, before any call: give it the
    /// prompts the run would send (`items.iter().map(prompt_fn)`).
    ///
    /// Input: each prompt at about four bytes a token (as the budget counts it), plus the
    /// backend's framing of a request, plus the shared instructions (`system_prompt`,
    /// `append_system_prompt`) on every item, at the prompt cache's prices where they are
    /// long enough to be cached (one write, then reads at a tenth of the price; with
    /// [`warm_cache`](crate::SessionBuilder::warm_cache) off, one write per item in flight).
    /// Output: the average of the answers this session has had so far, else the session's
    /// output allowance; [`Estimate::with_output_tokens`] sets your own guess. Prompts whose
    /// answer is in the session's journal are free and counted apart.
    ///
    /// For `claude_filter` and `claude_group_by` add about 40 tokens a prompt: the
    /// instruction and the allowed answers appended to it (their journal keeps the prompt
    /// with it, so their answers in the journal are not seen here).
    ///
    /// # Examples
    ///
    /// ```
    /// # claude_rayon::simulator::serve_if_requested();
    /// use claude_rayon::Session;
    ///
    /// let session = Session::builder().simulated()?.model("sonnet").build()?;
    /// let tickets = vec![
    ///     "The invoice PDF shows last month's address although we moved in March.",
    ///     "Two seats were billed twice on the annual plan; please refund one of them.",
    /// ];
    /// let estimate = session
    ///     .estimate(tickets.iter().map(|t| format!("Summarise this ticket in one line:\n{t}")))
    ///     .with_output_tokens(30);
    /// println!("{estimate}");
    /// assert_eq!(estimate.items, 2);
    /// assert!(estimate.cost_usd > 0.0 && estimate.cost_usd < 0.01);
    /// # Ok::<(), claude_rayon::Error>(())
    /// ```
    pub fn estimate<P: AsRef<str>>(&self, prompts: impl IntoIterator<Item = P>) -> Estimate {
        let config = self.config();
        let journal = config
            .journal
            .as_ref()
            .zip(self.answer_settings().as_ref().ok());
        let overhead = self.backend().request_overhead_tokens();
        let (mut items, mut answered, mut prompt_tokens) = (0u64, 0u64, 0u64);
        for prompt in prompts {
            let prompt = prompt.as_ref();
            items += 1;
            if journal.is_some_and(|(journal, settings)| journal.has(Key::of(settings, prompt))) {
                answered += 1;
                continue;
            }
            prompt_tokens += estimate_tokens(prompt) + overhead;
        }
        let to_ask = items - answered;
        // The shared instructions: billed on every item, from the cache where they can be.
        let shared = config.spec.shared_prefix_tokens();
        let (mut input, mut write, mut read) = (prompt_tokens, 0, 0);
        if shared >= CACHE_MIN_TOKENS && to_ask > 0 {
            let writes = if config.warm_cache {
                1
            } else {
                (config.concurrency as u64).min(to_ask)
            };
            write = shared * writes;
            read = shared * (to_ask - writes);
        } else {
            input += shared * to_ask;
        }
        let model = self.admission().model().map(str::to_string);
        let stats = self.stats();
        let paid = stats.succeeded.saturating_sub(stats.replayed);
        let (per_item, basis) = if paid > 0 && stats.usage.output_tokens > 0 {
            (
                stats.usage.output_tokens.div_ceil(paid),
                OutputBasis::AnswersSoFar,
            )
        } else {
            (config.output_token_allowance, OutputBasis::Allowance)
        };
        let mut price = list_price(model.as_deref());
        if self.answers_in_batches() {
            // The Message Batches API bills every token at half the list price.
            price = (price.0 / 2.0, price.1 / 2.0);
        }
        Estimate {
            items,
            already_answered: answered,
            input_tokens: input,
            cache_write_tokens: write,
            cache_read_tokens: read,
            output_tokens_per_item: 0,
            output_basis: basis,
            output_tokens: 0,
            max_tokens_per_call: self.backend().max_output_tokens(),
            model,
            price_per_million: price,
            input_cost_usd: 0.0,
            cost_usd: 0.0,
            max_cost_usd: None,
        }
        .priced(per_item)
    }
}

impl fmt::Display for Estimate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let to_ask = self.items - self.already_answered;
        let model = self
            .model
            .as_deref()
            .unwrap_or("the CLI's default model (priced as Opus)");
        let (input_price, output_price) = self.price_per_million;
        write!(f, "Estimate for {} items", thousands(self.items))?;
        if self.already_answered > 0 {
            write!(
                f,
                " ({} already in the journal, free; {} to ask)",
                thousands(self.already_answered),
                thousands(to_ask)
            )?;
        }
        writeln!(
            f,
            " on {model}, at ${input_price:.2} in / ${output_price:.2} out per million tokens:"
        )?;
        let input = self.input_tokens + self.cache_write_tokens + self.cache_read_tokens;
        write!(
            f,
            "  input   {:>12} tokens  {:>10}",
            thousands(input),
            dollars(self.input_cost_usd)
        )?;
        if self.cache_read_tokens > 0 {
            write!(
                f,
                "  (shared instructions: {} tokens written to the prompt cache, {} read from it)",
                thousands(self.cache_write_tokens),
                thousands(self.cache_read_tokens)
            )?;
        }
        writeln!(f)?;
        let basis = match self.output_basis {
            OutputBasis::Guess => "your guess",
            OutputBasis::AnswersSoFar => "the answers so far",
            OutputBasis::Allowance => "a guess: set yours with with_output_tokens",
        };
        writeln!(
            f,
            "  output  {:>12} tokens  {:>10}  ({} an item, {basis})",
            format!("~{}", thousands(self.output_tokens)),
            format!("~{}", dollars(self.cost_usd - self.input_cost_usd)),
            thousands(self.output_tokens_per_item)
        )?;
        write!(
            f,
            "  total   {:>12}         {:>10}",
            "",
            format!("~{}", dollars(self.cost_usd))
        )?;
        if let (Some(max), Some(max_cost)) = (self.max_tokens_per_call, self.max_cost_usd) {
            write!(
                f,
                ", at most {} if every answer ran to max_tokens ({})",
                dollars(max_cost),
                thousands(max)
            )?;
        }
        Ok(())
    }
}

/// 1234567 as "1,234,567".
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Dollars to the cent, or to a hundredth of a cent below a dollar.
fn dollars(usd: f64) -> String {
    if usd >= 1.0 {
        format!("${usd:.2}")
    } else {
        format!("${usd:.4}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_read_as_a_person_writes_them() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(dollars(12.345), "$12.35");
        assert_eq!(dollars(0.01234), "$0.0123");
    }

    #[test]
    fn a_guess_reprices_the_output_and_the_ceiling() {
        let estimate = Estimate {
            items: 10,
            already_answered: 2,
            input_tokens: 8_000,
            cache_write_tokens: 0,
            cache_read_tokens: 0,
            output_tokens_per_item: 0,
            output_basis: OutputBasis::Allowance,
            output_tokens: 0,
            max_tokens_per_call: Some(1_000),
            model: Some("claude-sonnet-4-5".into()),
            price_per_million: (3.0, 15.0),
            input_cost_usd: 0.0,
            cost_usd: 0.0,
            max_cost_usd: None,
        }
        .with_output_tokens(100);
        // 8 items to ask: 800 output tokens; input 8,000 at $3/M, output at $15/M.
        assert_eq!(estimate.output_tokens, 800);
        assert!((estimate.input_cost_usd - 0.024).abs() < 1e-12);
        assert!((estimate.cost_usd - 0.036).abs() < 1e-12);
        assert!((estimate.max_cost_usd.unwrap() - (0.024 + 0.12)).abs() < 1e-12);
        let shown = estimate.to_string();
        assert!(
            shown.starts_with("Estimate for 10 items (2 already in the journal, free; 8 to ask)"),
            "{shown}"
        );
        assert!(shown.contains("(100 an item, your guess)"), "{shown}");
        assert!(
            shown.contains("at most $0.1440 if every answer ran to max_tokens (1,000)"),
            "{shown}"
        );
    }
}
