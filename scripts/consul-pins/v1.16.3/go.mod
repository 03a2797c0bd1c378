module portlink.invalid/consul-build

go 1.20

require github.com/hashicorp/consul v1.16.3

exclude (
	github.com/hashicorp/go-msgpack v1.1.5
	github.com/hashicorp/go-msgpack v1.1.6
)
