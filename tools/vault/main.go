// Command vault builds a real Vault server (v1.14.1, the last MPL-2.0 release)
// from the Go module proxy. There is no container engine on the machines this
// project runs on and the proxy does not serve OpenBao, so the tests and
// `make demo` run against this binary. See README "Testing".
package main

import (
	"os"

	"github.com/hashicorp/vault/command"
)

func main() {
	os.Exit(command.Run(os.Args[1:]))
}
