//! Derives for brainstate-rs: `#[derive(Tree)]` makes a struct a tree node whose children are
//! its fields, in declaration order (every field's type must implement `brainstate::Tree`);
//! `#[derive(HasStates)]` collects the states a struct holds, under its fields' names.

use proc_macro::TokenStream;
use quote::quote;
use syn::{Data, DeriveInput, Fields, Index, parse_macro_input};

/// Derives `brainstate::Tree` for a struct with named or positional fields.
#[proc_macro_derive(Tree)]
pub fn derive_tree(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    let name = &input.ident;
    let name_str = name.to_string();
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let Data::Struct(data) = &input.data else {
        return syn::Error::new_spanned(&input.ident, "#[derive(Tree)] supports structs only")
            .to_compile_error()
            .into();
    };
    // (accessor for `self.<field>`, field name in the TreeDef)
    let fields: Vec<(proc_macro2::TokenStream, String)> = match &data.fields {
        Fields::Named(named) => named
            .named
            .iter()
            .map(|f| {
                let ident = f.ident.as_ref().expect("named field");
                (quote!(#ident), ident.to_string())
            })
            .collect(),
        Fields::Unnamed(unnamed) => (0..unnamed.unnamed.len())
            .map(|i| {
                let index = Index::from(i);
                (quote!(#index), i.to_string())
            })
            .collect(),
        Fields::Unit => Vec::new(),
    };
    let accessors: Vec<_> = fields.iter().map(|(a, _)| a).collect();
    let names: Vec<_> = fields.iter().map(|(_, n)| n).collect();
    let positions: Vec<Index> = (0..fields.len()).map(Index::from).collect();
    let count = fields.len();
    let construct = match &data.fields {
        Fields::Named(_) => quote! {
            #name { #( #accessors: brainstate::Tree::unflatten(&fields[#positions].1, leaves)?, )* }
        },
        Fields::Unnamed(_) => quote! {
            #name ( #( brainstate::Tree::unflatten(&fields[#positions].1, leaves)?, )* )
        },
        Fields::Unit => quote!(#name),
    };
    quote! {
        impl #impl_generics brainstate::Tree for #name #ty_generics #where_clause {
            fn flatten(&self, leaves: &mut ::std::vec::Vec<brainstate::Tensor>) {
                #( brainstate::Tree::flatten(&self.#accessors, leaves); )*
            }
            fn def(&self) -> brainstate::TreeDef {
                brainstate::TreeDef::Struct {
                    name: #name_str,
                    fields: ::std::vec![ #( (#names, brainstate::Tree::def(&self.#accessors)), )* ],
                }
            }
            fn unflatten(
                def: &brainstate::TreeDef,
                leaves: &mut dyn ::std::iter::Iterator<Item = brainstate::Tensor>,
            ) -> brainstate::Result<Self> {
                match def {
                    brainstate::TreeDef::Struct { name, fields }
                        if *name == #name_str && fields.len() == #count =>
                    {
                        ::std::result::Result::Ok(#construct)
                    }
                    other => ::std::result::Result::Err(other.mismatch(concat!("struct ", #name_str))),
                }
            }
        }
    }
    .into()
}

/// Derives `brainstate::HasStates` for a struct: its states are those of its fields, under
/// their names (or positions), and `&value` converts into `brainstate::GradStates`. Fields
/// marked `#[states(skip)]` are left out.
#[proc_macro_derive(HasStates, attributes(states))]
pub fn derive_has_states(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    let name = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let Data::Struct(data) = &input.data else {
        return syn::Error::new_spanned(&input.ident, "#[derive(HasStates)] supports structs only")
            .to_compile_error()
            .into();
    };
    let mut visits = Vec::new();
    for (i, field) in data.fields.iter().enumerate() {
        let mut skip = false;
        for attr in field.attrs.iter().filter(|a| a.path().is_ident("states")) {
            let parsed = attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("skip") {
                    skip = true;
                    Ok(())
                } else {
                    Err(meta.error("expected `#[states(skip)]`"))
                }
            });
            if let Err(e) = parsed {
                return e.to_compile_error().into();
            }
        }
        if skip {
            continue;
        }
        let (access, label) = match &field.ident {
            Some(ident) => (quote!(#ident), ident.to_string()),
            None => {
                let index = Index::from(i);
                (quote!(#index), i.to_string())
            }
        };
        visits.push(quote! {
            brainstate::HasStates::collect_states(
                &self.#access,
                &brainstate::StateCollector::join(path, #label),
                into,
            );
        });
    }
    quote! {
        impl #impl_generics brainstate::HasStates for #name #ty_generics #where_clause {
            fn collect_states(&self, path: &str, into: &mut brainstate::StateCollector) {
                #( #visits )*
            }
        }

        impl #impl_generics ::std::convert::From<&#name #ty_generics> for brainstate::GradStates
            #where_clause
        {
            fn from(model: &#name #ty_generics) -> brainstate::GradStates {
                brainstate::HasStates::states(model)
            }
        }
    }
    .into()
}
