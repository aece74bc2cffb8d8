package configs

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
)

// Diff lists the keys whose values differ between a and b, as paths the
// way errors name them ("listeners[0].bind", "log.level",
// "upstreams.acme.balance"). A list, a mapping or an optional section
// that was added, removed or changed in length or in keys is one key.
// Reload uses it to say which changes it cannot apply.
func Diff(a, b *File) []string {
	var keys []string
	diff(reflect.ValueOf(*a), reflect.ValueOf(*b), "", &keys)
	return keys
}

func diff(a, b reflect.Value, path string, keys *[]string) {
	switch a.Kind() {
	case reflect.Struct:
		for i := range a.NumField() {
			f := a.Type().Field(i)
			if !f.IsExported() {
				continue
			}
			diff(a.Field(i), b.Field(i), joinKey(path, yamlKey(f)), keys)
		}
	case reflect.Slice:
		if a.Len() != b.Len() {
			*keys = append(*keys, path)
			return
		}
		for i := range a.Len() {
			diff(a.Index(i), b.Index(i), fmt.Sprintf("%s[%d]", path, i), keys)
		}
	case reflect.Map:
		if a.Len() != b.Len() {
			*keys = append(*keys, path)
			return
		}
		ks := a.MapKeys()
		slices.SortFunc(ks, func(x, y reflect.Value) int { return strings.Compare(x.String(), y.String()) })
		for _, k := range ks {
			if !b.MapIndex(k).IsValid() {
				*keys = append(*keys, path)
				return
			}
		}
		for _, k := range ks {
			diff(a.MapIndex(k), b.MapIndex(k), joinKey(path, k.String()), keys)
		}
	case reflect.Pointer:
		if a.IsNil() || b.IsNil() {
			if a.IsNil() != b.IsNil() {
				*keys = append(*keys, path)
			}
			return
		}
		diff(a.Elem(), b.Elem(), path, keys)
	default:
		if !reflect.DeepEqual(a.Interface(), b.Interface()) {
			*keys = append(*keys, path)
		}
	}
}

// yamlKey is the key struct field f is written as in the file.
func yamlKey(f reflect.StructField) string {
	name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	if name == "" {
		return strings.ToLower(f.Name)
	}
	return name
}
