# The ports edgectl's nodes use, in one table: the modules open them and the Rust code dials
# them (cli/edgectl/tests/ports.rs fails when the two disagree).
let
  ports = {
    # The edgectl agent: QUIC, so UDP; mutual TLS against the cluster CA is its guard.
    agent = 7443;
    # The agent's own Zenoh listener for verify's latency matrix (TCP), open only during a
    # verify run; not zenohd's 7447, which a router on the node may hold.
    zenohProbe = 7448;
    # zenohd: TCP and UDP.
    zenoh = 7447;
    # Ray's head (GCS), TCP.
    rayGcs = 6379;
  };
in
{
  inherit ports;

  # agentFirewallFor { port; probe; } -> { udp = [ ... ]; tcp = [ ... ]; }: what a node with the
  # agent opens on every interface (the controller reaches it over the control network, peers
  # over the experiment LAN).
  agentFirewallFor = { port ? ports.agent, probe ? ports.zenohProbe }: {
    udp = [ port ];
    tcp = [ probe ];
  };
}
