// A tiny HTTP service and client for the local node's tests and the service golden path's examples:
// static, standard library only, so its image needs nothing but the binary.
module blacktop.dev/hack/tools/demo-app

go 1.25.0
