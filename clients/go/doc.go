// Package modelroute is a thin Go client for the modelroute control plane.
//
// Before an LLM call, ask the server which model to use (Resolve); after it, say what
// happened (Report). CallWithFallback does both around your call and walks the
// server's fallback list when a provider answers with a quota or rate-limit error,
// reporting every attempt so the server puts the failing model in cooldown for everyone.
//
// The generated gRPC stubs live in gen/modelroute/v1 (package modelroutev1) and
// gen/modelroute/admin/v1 (package adminv1) for anything this wrapper does not cover.
package modelroute
