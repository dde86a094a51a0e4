// stanzacheck runs the operators of one filelog receiver from an OpenTelemetry Collector config
// over lines read from a file, with the collector's own stanza library, and prints every entry
// that comes out as one JSON object a line. tests/test_audit_collector.py uses it to check
// compose/otel/config.yaml without a collector or a Docker engine.
//
//	stanzacheck CONFIG RECEIVER INPUT
package main

import (
	"context"
	"bufio"
	"fmt"
	"os"

	"go.opentelemetry.io/collector/component/componenttest"
	"go.opentelemetry.io/collector/confmap"
	"gopkg.in/yaml.v3"

	"github.com/open-telemetry/opentelemetry-collector-contrib/pkg/stanza/entry"
	"github.com/open-telemetry/opentelemetry-collector-contrib/pkg/stanza/operator"
	_ "github.com/open-telemetry/opentelemetry-collector-contrib/pkg/stanza/operator/output/stdout"
	_ "github.com/open-telemetry/opentelemetry-collector-contrib/pkg/stanza/operator/parser/jsonparser"
	_ "github.com/open-telemetry/opentelemetry-collector-contrib/pkg/stanza/operator/transformer/add"
	_ "github.com/open-telemetry/opentelemetry-collector-contrib/pkg/stanza/operator/transformer/filter"
	_ "github.com/open-telemetry/opentelemetry-collector-contrib/pkg/stanza/operator/transformer/move"
	_ "github.com/open-telemetry/opentelemetry-collector-contrib/pkg/stanza/operator/transformer/remove"
	"github.com/open-telemetry/opentelemetry-collector-contrib/pkg/stanza/pipeline"
	"github.com/open-telemetry/opentelemetry-collector-contrib/pkg/stanza/testutil"
)

type receiver struct {
	Operators []operator.Config `mapstructure:"operators"`
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "stanzacheck: "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	if len(os.Args) != 4 {
		fail("usage: stanzacheck CONFIG RECEIVER INPUT")
	}
	raw, err := os.ReadFile(os.Args[1])
	if err != nil {
		fail("%v", err)
	}
	var doc struct {
		Receivers map[string]map[string]any `yaml:"receivers"`
	}
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		fail("%s: %v", os.Args[1], err)
	}
	rc, ok := doc.Receivers[os.Args[2]]
	if !ok {
		fail("no receiver %s", os.Args[2])
	}
	ops := append([]any{}, rc["operators"].([]any)...)
	ops = append(ops, map[string]any{"type": "stdout"})
	var r receiver
	if err := confmap.NewFromStringMap(map[string]any{"operators": ops}).Unmarshal(&r); err != nil {
		fail("operators of %s: %v", os.Args[2], err)
	}
	p, err := pipeline.Config{Operators: r.Operators}.Build(componenttest.NewNopTelemetrySettings())
	if err != nil {
		fail("build %s: %v", os.Args[2], err)
	}
	if err := p.Start(testutil.NewUnscopedMockPersister()); err != nil {
		fail("start: %v", err)
	}
	first := p.Operators()[0]
	in, err := os.Open(os.Args[3])
	if err != nil {
		fail("%v", err)
	}
	scanner := bufio.NewScanner(in)
	scanner.Buffer(make([]byte, 1<<20), 16<<20)
	for scanner.Scan() {
		e := entry.New()
		e.Body = scanner.Text() // as the filelog receiver hands a line over
		if err := first.Process(context.Background(), e); err != nil {
			fmt.Fprintf(os.Stderr, "stanzacheck: line: %v\n", err)
		}
	}
	if err := p.Stop(); err != nil {
		fail("stop: %v", err)
	}
}
