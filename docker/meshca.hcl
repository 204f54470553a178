# meshca's configuration in docker/compose.yaml: the CA keys live in the
# OpenBao dev server next to it. The image's entrypoint sets data_dir
# (/var/lib/meshca) and client_addr (0.0.0.0).
#
# FOR TRYING meshca ONLY: the token below is the dev server's root token,
# fixed in compose.yaml. In production, give meshca a token limited to the
# policy in crates/meshca-provider-vault/README.md (or AppRole), Vault over
# https://, and keep this file readable by meshca alone.
datacenter = "dc1"

connect {
  ca_provider = "vault"
  ca_config {
    address               = "http://openbao:8200"
    token                 = "meshca-dev-only-root-token"
    root_pki_path         = "connect-root"
    intermediate_pki_path = "connect-intermediate-dc1"
  }
}
