//! One table of ports (modules/lib/ports.nix), evaluated by real Nix: the ports the Rust code
//! dials are the ones the NixOS modules open, with the right protocol.

fn eval(expr: &str) -> serde_json::Value {
    serde_json::from_str(&edgectl_testkit::eval_modules_lib(expr)).unwrap()
}

#[test]
fn the_ports_rust_dials_are_the_ports_the_modules_open() {
    if edgectl_testkit::nix().is_none() {
        return;
    }
    let p = eval("lib.ports");
    assert_eq!(p["agent"], edgectl_verify::verify::DEFAULT_AGENT_PORT);
    assert_eq!(p["zenohProbe"], edgectl_verify::verify::DEFAULT_ZENOH_PORT);
    assert_eq!(p["rayGcs"], edgectl_verify::verify::RAY_GCS_PORT);
    assert_eq!(p["zenoh"], edgectl_render::host::ZENOH_PORT);
    // The agent speaks QUIC: its port is opened for UDP, and the probe listener for TCP.
    let fw = eval("lib.agentFirewallFor { }");
    assert_eq!(
        fw["udp"],
        serde_json::json!([edgectl_verify::verify::DEFAULT_AGENT_PORT])
    );
    assert_eq!(
        fw["tcp"],
        serde_json::json!([edgectl_verify::verify::DEFAULT_ZENOH_PORT])
    );
    // The agent's own arguments listen on the table's port.
    let args = eval("lib.agentArgsFor { }");
    assert_eq!(
        args[1],
        format!("0.0.0.0:{}", edgectl_verify::verify::DEFAULT_AGENT_PORT)
    );
}
