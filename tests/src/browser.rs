//! A real headless Chromium (Debian's `chromium` package) driven over the DevTools protocol,
//! for the dashboard's tests: open a page, wait for what it shows, click, read console errors
//! and uncaught exceptions, take screenshots.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use headless_chrome::protocol::cdp::types::Event;
use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
use headless_chrome::{Browser, LaunchOptions, Tab};
use serde_json::Value;

/// The browser: `CHROMIUM`, else Debian's `/usr/bin/chromium`.
fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// One headless Chromium with one tab (fields drop in order: the tab, then the browser).
pub struct Chromium {
    tab: Arc<Tab>,
    problems: Arc<Mutex<Vec<String>>>,
    _browser: Browser,
}

impl std::fmt::Debug for Chromium {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chromium")
            .field("url", &self.tab.get_url())
            .finish_non_exhaustive()
    }
}

impl Chromium {
    /// Starts Chromium (no sandbox: CI runs as root) with a 1280×900 window.
    pub fn start() -> Chromium {
        let options = LaunchOptions::default_builder()
            .path(Some(chromium()))
            .sandbox(false)
            .window_size(Some((1280, 900)))
            .idle_browser_timeout(Duration::from_secs(300))
            .build()
            .expect("launch options");
        let browser = Browser::new(options)
            .expect("chromium starts (Debian's chromium package; .ci/run installs it)");
        let tab = browser.new_tab().expect("a tab");
        tab.set_default_timeout(Duration::from_secs(20));
        let problems: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = problems.clone();
        tab.add_event_listener(Arc::new(move |event: &Event| {
            let problem = match event {
                Event::RuntimeConsoleAPICalled(call)
                    if format!("{:?}", call.params.Type).contains("Error") =>
                {
                    Some(format!("console.error: {:?}", call.params.args))
                }
                Event::RuntimeExceptionThrown(thrown) => {
                    Some(format!("uncaught: {:?}", thrown.params.exception_details))
                }
                Event::LogEntryAdded(entry)
                    if format!("{:?}", entry.params.entry.level).contains("Error") =>
                {
                    Some(format!(
                        "log: {} {:?}",
                        entry.params.entry.text, entry.params.entry.url
                    ))
                }
                _ => None,
            };
            if let Some(problem) = problem {
                seen.lock().unwrap().push(problem);
            }
        }))
        .expect("an event listener");
        tab.enable_runtime().expect("the runtime domain");
        tab.enable_log().expect("the log domain");
        Chromium {
            tab,
            problems,
            _browser: browser,
        }
    }

    /// Opens `url` and waits for its load.
    pub fn open(&self, url: &str) {
        self.tab
            .navigate_to(url)
            .and_then(|tab| tab.wait_until_navigated())
            .unwrap_or_else(|e| panic!("{url} loads: {e}"));
    }

    /// Evaluates `expression` (awaiting a promise) and returns its value as JSON.
    pub fn eval(&self, expression: &str) -> Value {
        let object = self
            .tab
            .evaluate(expression, true)
            .unwrap_or_else(|e| panic!("{expression}: {e}"));
        object.value.unwrap_or(Value::Null)
    }

    /// Polls `expression` until it is truthy (at most `timeout`); returns its value.
    pub fn wait_for(&self, what: &str, timeout: Duration, expression: &str) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.eval(expression);
            let truthy = match &value {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "{what} within {timeout:?}; the page shows: {}",
                self.eval(
                    "document.getElementById('view') && document.getElementById('view').innerText"
                )
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Clicks the element `selector` (waiting for it).
    pub fn click(&self, selector: &str) {
        self.tab
            .wait_for_element(selector)
            .and_then(|element| element.click().map(|_| ()))
            .unwrap_or_else(|e| panic!("click {selector}: {e}"));
    }

    /// Writes a PNG of the page as it is now.
    pub fn screenshot(&self, path: &Path) {
        let png = self
            .tab
            .capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true)
            .expect("a screenshot");
        std::fs::write(path, png).expect("the screenshot is written");
    }

    /// Console errors, uncaught exceptions and error log entries seen so far.
    pub fn problems(&self) -> Vec<String> {
        self.problems.lock().unwrap().clone()
    }

    /// The problems seen so far, forgotten (after a step that provokes some on purpose).
    pub fn take_problems(&self) -> Vec<String> {
        std::mem::take(&mut *self.problems.lock().unwrap())
    }
}
