use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = sfp_server::cli::Cli::parse();
    match sfp_server::cli::run(cli).await {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
