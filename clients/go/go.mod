module github.com/modelroute/modelroute/clients/go

go 1.19

// Versions are the ones Debian 12 ships (golang-google-grpc-dev, golang-google-protobuf-dev),
// which test.sh builds against in GOPATH mode; see README.md.
require (
	google.golang.org/grpc v1.33.3
	google.golang.org/protobuf v1.28.1
	// grpc 1.33 encodes through the APIv1 shim; 1.5.x forwards to APIv2 (1.3.x panics on APIv2 messages).
	github.com/golang/protobuf v1.5.2 // indirect
)
