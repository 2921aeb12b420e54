// Package api is the contract between a node and whoever calls it: the requests and answers its
// HTTP+JSON API takes and gives, and the Client that calls it over the cookie-proven channel.
// The CLI, the tests and the nodes calling each other use these types; the node's handlers live
// in the agent. The log's own records (consensus) and the rollout's domain (rollout) are other
// contracts: a change to one need not change this one.
package api
