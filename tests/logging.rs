//! Feedback on long work: building a plan (trace, differentiate, simplify and plan) and
//! running it are logged through the `log` facade, with times and program sizes, and so is a
//! loop's progress when it asks for it. One test in its own binary, so that no other test's
//! transforms log meanwhile.

use std::sync::Mutex;

use brainstate::{Tensor, hessian};

/// Captures the log records of this test binary.
struct Capture(Mutex<Vec<String>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        let line = format!("{} {}", record.level(), record.args());
        self.0.lock().unwrap().push(line);
    }
    fn flush(&self) {}
}

static CAPTURE: Capture = Capture(Mutex::new(Vec::new()));

#[test]
fn building_a_plan_is_logged_with_times_and_sizes() {
    log::set_logger(&CAPTURE).unwrap();
    log::set_max_level(log::LevelFilter::Debug);
    let h = hessian(|x: &Tensor| x.powi(3).sum());
    h.call(&Tensor::from([1.0, 2.0])).unwrap();
    h.call(&Tensor::from([3.0, 4.0])).unwrap();
    let lines = CAPTURE.0.lock().unwrap().clone();
    let has = |level: &str, parts: &[&str]| {
        lines
            .iter()
            .any(|l| l.starts_with(level) && parts.iter().all(|p| l.contains(p)))
    };
    assert!(
        has("INFO", &["hessian: built the plan", "equations"]),
        "{lines:#?}"
    );
    assert!(
        has("DEBUG", &["hessian: traced the function", "equations"]),
        "{lines:#?}"
    );
    assert!(
        has(
            "DEBUG",
            &[
                "hessian: differentiated",
                "simplified and planned",
                "equations"
            ]
        ),
        "{lines:#?}"
    );
    let plans = lines
        .iter()
        .filter(|l| l.contains("built the plan"))
        .count();
    let runs = lines.iter().filter(|l| l.contains("ran the plan")).count();
    assert_eq!((plans, runs), (1, 2));

    // Loops report their progress through the same facade when asked to.
    let progress = brainstate::Progress::log().every(50).desc("simulating");
    brainstate::Scan::new()
        .progress(progress)
        .for_loop(|x: &Tensor| x * 2.0, &Tensor::zeros(&[120]))
        .unwrap();
    let lines = CAPTURE.0.lock().unwrap().clone();
    let reports: Vec<&String> = lines.iter().filter(|l| l.contains("simulating")).collect();
    assert_eq!(reports.len(), 3, "{reports:#?}"); // steps 50, 100 and the last
    assert!(reports[0].starts_with("INFO") && reports[0].contains("50/120 steps"));
    assert!(reports[2].contains("120/120 steps"), "{reports:#?}");
}
