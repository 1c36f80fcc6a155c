//! Compiles the `.proto` files with protox, so no system `protoc` is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "gatewan/v1/model.proto",
        "gatewan/v1/mesh_wire.proto",
        "gatewan/v1/api.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    // The explanation is rendered as YAML and JSON by routingctl as it is on the wire.
    let serialize = [
        "ExplainResponse",
        "Explanation",
        "RemoteExplanation",
        "PendingChange",
        "Candidate",
        "CandidateMetrics",
        "ScoreTerm",
        "ScoreTerms",
        "IgnoredTunnel",
        "DecisionChange",
        // `routingctl transits` renders a gatewan's transits the same way.
        "Transit",
        "SetDrainedResponse",
        "TraceResponse",
        "TracePath",
        "TraceEgress",
        "ProbeOutcome",
        "SetDisabledResponse",
    ];
    let mut config = tonic_prost_build::configure().bytes(".");
    for m in serialize {
        config = config.type_attribute(format!(".gatewan.v1.{m}"), "#[derive(serde::Serialize)]");
    }
    config.compile_fds(fds)?;
    Ok(())
}
