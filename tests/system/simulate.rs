//! The first hour: `vigil simulate` against a running server shows a newcomer warming up,
//! scoring, an alarm with its changepoint, and the return to normal; the alarm is on record.

use system_tests::{run_vigil, TestServer, TOKEN};

#[test]
fn simulate_walks_a_newcomer_from_warming_up_to_an_alarm_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let url = format!("http://{}", server.address());
    let args = ["simulate", "--url", &url, "--token", TOKEN, "--rate", "0"];
    let (ok, text) = run_vigil(&args);
    assert!(ok, "{text}");
    assert!(
        text.starts_with("created detector simulated-pump"),
        "{text}"
    );
    // The states, in the order a newcomer sees them.
    let position = |needle: &str| {
        text.find(needle)
            .unwrap_or_else(|| panic!("{needle:?} missing:\n{text}"))
    };
    let order = [
        position("warming_up  1/400"),
        position("scored "),
        position("fault injected"),
        position("ALARM  changepoint"),
        position("fault over"),
        position("alarm ended"),
        position("done: 1000 readings"),
    ];
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}\n{text}");
    let alarms = server.get("/v1/alarms?detector=simulated-pump").body;
    assert_eq!(alarms["alarms"].as_array().unwrap().len(), 1, "{alarms}");
    assert_eq!(alarms["alarms"][0]["state"], "returned_unacknowledged");
    assert_eq!(alarms["alarms"][0]["contributions"][0]["feature"], "flow");

    // Again: the detector is there, and a wrong token is refused with a clear message.
    let (ok, text) = run_vigil(&args);
    assert!(
        ok && text.starts_with("detector simulated-pump exists"),
        "{text}"
    );
    let (ok, text) = run_vigil(&["simulate", "--url", &url, "--token", "wrong", "--rate", "0"]);
    assert!(!ok && text.contains("401"), "{text}");
}
