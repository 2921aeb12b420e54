// Command duck-broken is a bad version for tests: it does not compile, so a
// build of it must fail with the compiler's message and nothing be swapped.
package main

import "fmt"

func main() {
	var quacks int = "many" // the compile error: a string is not an int
	fmt.Println(quacks)
}
