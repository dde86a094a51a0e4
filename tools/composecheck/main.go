// Command composecheck validates vaultsync's compose stack with the reference
// Compose implementation library (compose-spec/compose-go), and parses HCL
// files with the HCL v1 parser that OpenBao's server config loader uses.
//
// Usage:
//
//	composecheck compose [-env-file FILE] [-name NAME] COMPOSE_FILE
//	    Load COMPOSE_FILE as `docker compose config` would: validate it against
//	    the Compose specification JSON schema embedded in compose-go,
//	    interpolate ${VAR} from FILE only (the OS environment is ignored, so the
//	    result does not depend on who runs it), normalise it, check that every
//	    referenced volume/network/secret/config exists, and print the resolved
//	    project as JSON on stdout. Exit 1 with the loader's error on stderr.
//
//	composecheck hcl FILE...
//	    Parse each FILE as HCL and print {"FILE": <decoded body>, ...} as JSON.
//
//	composecheck version
//	    Print the compose-go version this binary was built with.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/hashicorp/hcl"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "compose":
		err = runCompose(os.Args[2:])
	case "hcl":
		err = runHCL(os.Args[2:])
	case "version":
		fmt.Println(composeGoVersion())
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "composecheck:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: composecheck compose [-env-file FILE] [-name NAME] COMPOSE_FILE | composecheck hcl FILE... | composecheck version")
	os.Exit(2)
}

func composeGoVersion() string {
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, dep := range info.Deps {
			if dep.Path == "github.com/compose-spec/compose-go/v2" {
				return dep.Version
			}
		}
	}
	return "unknown"
}

func runCompose(args []string) error {
	fs := flag.NewFlagSet("compose", flag.ExitOnError)
	envFile := fs.String("env-file", "", "file with KEY=value lines used for ${VAR} interpolation (none: empty environment)")
	name := fs.String("name", "vaultsync", "project name")
	_ = fs.Parse(args)
	if fs.NArg() != 1 {
		return fmt.Errorf("compose: exactly one compose file expected, got %d", fs.NArg())
	}
	file, err := filepath.Abs(fs.Arg(0))
	if err != nil {
		return err
	}
	opts := []cli.ProjectOptionsFn{
		cli.WithName(*name),
		cli.WithWorkingDirectory(filepath.Dir(file)),
		cli.WithInterpolation(true),
		cli.WithNormalization(true),
		cli.WithConsistency(true),
		cli.WithResolvedPaths(true),
	}
	if *envFile != "" {
		abs, err := filepath.Abs(*envFile)
		if err != nil {
			return err
		}
		opts = append(opts, cli.WithEnvFiles(abs), cli.WithDotEnv)
	} else {
		// No default ./.env either: an empty environment is the point.
		opts = append(opts, cli.WithEnvFiles(os.DevNull), cli.WithDotEnv)
	}
	options, err := cli.NewProjectOptions([]string{file}, opts...)
	if err != nil {
		return fmt.Errorf("options: %w", err)
	}
	project, err := options.LoadProject(context.Background())
	if err != nil {
		return err
	}
	out, err := project.MarshalJSON()
	if err != nil {
		return fmt.Errorf("marshal: %w", err)
	}
	_, err = os.Stdout.Write(append(out, '\n'))
	return err
}

func runHCL(files []string) error {
	if len(files) == 0 {
		return fmt.Errorf("hcl: no files given")
	}
	result := map[string]any{}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		var body map[string]any
		if err := hcl.Unmarshal(raw, &body); err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
		result[f] = body
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(result)
}
