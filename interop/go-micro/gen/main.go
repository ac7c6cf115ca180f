// Command gen writes the Go types of the project's .proto files (../../proto) with
// protoc-gen-go's own generator, driven in process: the .proto files are parsed by
// protocompile (pure Go, no protoc), handed to protogen as a CodeGeneratorRequest, and the
// files internal_gengo produces are written under pb/.
//
//	go run ./gen -proto ../../proto -out .
package main

import (
	"context"
	"flag"
	"log"
	"os"
	"path/filepath"
	"strings"

	"github.com/bufbuild/protocompile"
	"google.golang.org/protobuf/cmd/protoc-gen-go/internal_gengo"
	"google.golang.org/protobuf/compiler/protogen"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/pluginpb"
)

const module = "event-interop/go-micro-peer"

// The files the peer uses, and the Go package each goes to.
var packages = map[string]string{
	"users/v1/users.proto": module + "/pb/usersv1;usersv1",
	"shop/v1/orders.proto": module + "/pb/shopv1;shopv1",
}

func main() {
	root := flag.String("proto", "../../proto", "the directory the .proto paths are relative to")
	out := flag.String("out", ".", "the module's root directory")
	flag.Parse()

	var names []string
	var params []string
	for name, pkg := range packages {
		names = append(names, name)
		params = append(params, "M"+name+"="+pkg)
	}
	params = append(params, "module="+module)

	compiler := protocompile.Compiler{
		Resolver: protocompile.WithStandardImports(&protocompile.SourceResolver{
			ImportPaths: []string{*root},
		}),
		SourceInfoMode: protocompile.SourceInfoStandard,
	}
	files, err := compiler.Compile(context.Background(), names...)
	if err != nil {
		log.Fatalf("compile %s: %v", strings.Join(names, ", "), err)
	}
	var protos []*descriptorpb.FileDescriptorProto
	for _, f := range files {
		protos = append(protos, protodesc.ToFileDescriptorProto(f))
	}
	plugin, err := protogen.Options{}.New(&pluginpb.CodeGeneratorRequest{
		FileToGenerate: names,
		Parameter:      proto.String(strings.Join(params, ",")),
		ProtoFile:      protos,
	})
	if err != nil {
		log.Fatal(err)
	}
	for _, f := range plugin.Files {
		if f.Generate {
			internal_gengo.GenerateFile(plugin, f)
		}
	}
	response := plugin.Response()
	if response.Error != nil {
		log.Fatal(response.GetError())
	}
	for _, f := range response.File {
		path := filepath.Join(*out, f.GetName())
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			log.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(f.GetContent()), 0o644); err != nil {
			log.Fatal(err)
		}
	}
}
