// Package openapi is a lockd client generated from api/openapi.yaml by a
// standard generator (oapi-codegen), with nothing written by hand. Its test
// drives a real lockd with it and checks that the committed code is what the
// generator makes from the current spec: the spec alone is enough to talk to
// lockd from any language.
package openapi

//go:generate go run github.com/oapi-codegen/oapi-codegen/v2/cmd/oapi-codegen@v2.8.2 -generate types,client -package openapi -o gen.go ../../api/openapi.yaml
