// Command envcheck reads an env file with the real parsers of its consumers and
// prints what they see as one JSON object {"KEY": "value", ...} on stdout, so
// vaultsync's tests can compare a rendered file with what Vault holds.
//
// Usage:
//
//	envcheck compose FILE   compose-go's dotenv parser (compose `env_file`),
//	                        with no lookup: nothing comes from the OS environment.
//	envcheck docker FILE    docker CLI's kvfile parser (`docker run --env-file`).
//	envcheck version        the module versions this binary was built with.
//
// Exit 1 with the parser's error on stderr when the parser refuses the file.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"runtime/debug"
	"strings"

	"github.com/compose-spec/compose-go/v2/dotenv"
	"github.com/docker/cli/pkg/kvfile"
)

func main() {
	if len(os.Args) == 2 && os.Args[1] == "version" {
		printVersions()
		return
	}
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: envcheck compose|docker FILE | envcheck version")
		os.Exit(2)
	}
	var (
		out map[string]string
		err error
	)
	switch os.Args[1] {
	case "compose":
		out, err = readCompose(os.Args[2])
	case "docker":
		out, err = readDocker(os.Args[2])
	default:
		fmt.Fprintln(os.Stderr, "envcheck: unknown reader", os.Args[1])
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "envcheck:", err)
		os.Exit(1)
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fmt.Fprintln(os.Stderr, "envcheck:", err)
		os.Exit(1)
	}
}

func readCompose(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	noLookup := func(string) (string, bool) { return "", false }
	return dotenv.ParseWithLookup(f, noLookup)
}

func readDocker(path string) (map[string]string, error) {
	lines, err := kvfile.Parse(path, nil)
	if err != nil {
		return nil, err
	}
	out := make(map[string]string, len(lines))
	for _, line := range lines {
		key, value, _ := strings.Cut(line, "=")
		out[key] = value // a later line wins, as in the container's environment
	}
	return out, nil
}

func printVersions() {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return
	}
	for _, dep := range info.Deps {
		if dep.Path == "github.com/compose-spec/compose-go/v2" || dep.Path == "github.com/docker/cli" {
			fmt.Println(dep.Path, dep.Version)
		}
	}
}
